from services.notifier.settings import NotifierSettings
from shared.service_app import serve

settings = NotifierSettings()
serve("services.notifier.app:create_app", settings.notifier_port, settings.host, config=settings.file_config)
