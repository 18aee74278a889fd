from services.console.settings import ConsoleSettings
from shared.service_app import serve

settings = ConsoleSettings()
serve("services.console.app:create_app", settings.console_port, settings.host, config=settings.file_config)
