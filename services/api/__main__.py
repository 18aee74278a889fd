from shared.service_app import serve
from shared.settings import get_settings

settings = get_settings()
serve("services.api.app:create_app", settings.api_port, settings.host)
