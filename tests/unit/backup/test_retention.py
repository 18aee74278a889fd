"""Which backups retention deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.backup.retention import StoredBackup, to_delete

NOW = datetime(2026, 11, 28, 3, tzinfo=UTC)


def backup(days: float, complete: bool = True) -> StoredBackup:
    return StoredBackup(f"b-{days}", NOW - timedelta(days=days), complete)


def test_old_complete_backups_go_but_the_newest_few_stay_whatever_their_age():
    backups = [backup(d) for d in (200, 120, 95, 30, 1)]
    assert to_delete(backups, NOW, timedelta(days=90), keep_last=2) == ["b-120", "b-200", "b-95"]
    assert to_delete(backups, NOW, timedelta(days=90), keep_last=4) == ["b-200"]


def test_the_newest_complete_backup_is_never_deleted():
    assert to_delete([backup(400), backup(500)], NOW, timedelta(days=90), keep_last=0) == ["b-500"]


def test_incomplete_leftovers_go_after_a_day_and_never_count_as_kept():
    backups = [backup(0.5, complete=False), backup(2, complete=False), backup(100)]
    assert to_delete(backups, NOW, timedelta(days=90), keep_last=1) == ["b-2"]
