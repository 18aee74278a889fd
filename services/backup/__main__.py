from services.backup.settings import BackupSettings
from shared.service_app import serve

settings = BackupSettings()
serve("services.backup.app:create_app", settings.backup_port, settings.host)
