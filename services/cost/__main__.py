from services.cost.settings import CostSettings
from shared.service_app import serve

settings = CostSettings()
serve("services.cost.app:create_app", settings.cost_port, settings.host, config=settings.file_config)
