from services.health.settings import HealthSettings
from shared.service_app import serve

settings = HealthSettings()
serve("services.health.app:create_app", settings.health_port, settings.host, config=settings.file_config)
