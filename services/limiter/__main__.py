from shared.service_app import serve
from shared.settings import get_settings

settings = get_settings()
serve("services.limiter.app:create_app", settings.limiter_port, settings.host)
