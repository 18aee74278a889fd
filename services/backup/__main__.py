from shared.service_app import serve
from shared.settings import get_settings

settings = get_settings()
serve("services.backup.app:create_app", settings.backup_port, settings.host)
