from shared.service_app import serve
from shared.settings import get_settings

settings = get_settings()
serve("services.notifier.app:create_app", settings.notifier_port, settings.host)
