"""What the backup service reads (and `costwarden backup` and `restore`, which stand for it): where
backups go in S3, how they are kept, and the client tools."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings import ServiceSettings


class BackupSettings(ServiceSettings):
    backup_port: int = 3005

    s3_backup_bucket: str | None = None
    s3_backup_prefix: str = Field(default="database-backups", min_length=1, pattern=r"^[^/].*[^/]$|^[^/]$")
    aws_region: str | None = None
    backup_database_url: str | None = Field(default=None, description="What to back up; DATABASE_URL if unset.")
    backup_sse: Literal["AES256", "aws:kms"] = "AES256"
    backup_kms_key_id: str | None = None
    backup_storage_class: str = "STANDARD_IA"
    backup_part_size_mb: int = Field(default=16, ge=5)
    backup_schedule: str = "0 2 * * *"
    backup_retention_days: int = Field(default=90, ge=1)
    backup_keep_last: int = Field(default=7, ge=1)
    backup_request_ttl_s: float = Field(default=3600, gt=0, description="A backup request older than this is not run.")
    pg_dump_path: str = "pg_dump"
    pg_restore_path: str = "pg_restore"
