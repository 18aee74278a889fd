from shared.service_app import serve
from shared.settings import get_settings

settings = get_settings()
serve("services.health.app:create_app", settings.health_port, settings.host)
