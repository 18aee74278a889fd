from services.api.settings import ApiSettings
from shared.service_app import serve

settings = ApiSettings()
serve("services.api.app:create_app", settings.api_port, settings.host, settings.api_workers,
      config=settings.file_config)
