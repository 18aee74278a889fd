from shared.service_app import serve
from shared.settings import get_settings

settings = get_settings()
serve("services.cost.app:create_app", settings.cost_port, settings.host)
