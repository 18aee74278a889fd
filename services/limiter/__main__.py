from services.limiter.settings import LimiterSettings
from shared.service_app import serve

settings = LimiterSettings()
serve("services.limiter.app:create_app", settings.limiter_port, settings.host, config=settings.file_config)
