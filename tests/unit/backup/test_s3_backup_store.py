"""Backup names in the store."""

from __future__ import annotations


def test_backup_names_are_unique_sort_by_time_and_old_names_still_read():
    from datetime import UTC, datetime, timedelta

    from services.backup.s3_backup_store import backup_name, created_at_of

    at = datetime(2026, 11, 28, 2, 28, 28, 123456, tzinfo=UTC)
    assert backup_name(at, "ab12cd") == "costwarden_backup_20261128_022828_123_ab12cd.dump.gz"
    same_second = {backup_name(at) for _ in range(50)}
    assert len(same_second) == 50
    later = backup_name(at + timedelta(milliseconds=1))
    assert max(same_second) < later  # names sort as their times do
    assert created_at_of(later) == datetime(2026, 11, 28, 2, 28, 28, 124000, tzinfo=UTC)
    old = "costwarden_backup_20261128_022828.dump.gz"
    assert created_at_of(old) == datetime(2026, 11, 28, 2, 28, 28, tzinfo=UTC) and old < min(same_second)
    assert created_at_of("costwarden_backup_20261128_022828_123_XYZ.dump.gz") is None


def test_the_s3_client_is_made_once_when_first_used_whichever_thread_asks_first():
    from concurrent.futures import ThreadPoolExecutor

    from services.backup.s3_backup_store import S3BackupStore

    store = S3BackupStore("bucket", "prefix", "us-east-1", "AES256", None, "STANDARD_IA", 5 * 1024 * 1024)
    assert store._s3 is None  # nothing made at start
    with ThreadPoolExecutor(4) as threads:
        clients = list(threads.map(lambda _: store.s3, range(8)))
    assert all(client is clients[0] for client in clients) and clients[0].meta.region_name == "us-east-1"
    assert clients[0].meta.config.request_checksum_calculation == "when_required"
