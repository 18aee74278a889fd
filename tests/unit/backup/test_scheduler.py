"""The backup schedule's slots."""

from __future__ import annotations


def test_backup_slots_follow_the_cron_schedule():
    from datetime import UTC, datetime

    from services.backup.s3_backup_store import backup_name, created_at_of
    from services.backup.scheduler import next_slot

    after = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)
    assert next_slot("0 2 * * *", after) == datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    assert next_slot("0 2 * * *", datetime(2026, 11, 27, 1, 59, tzinfo=UTC)) == after
    assert created_at_of(backup_name(after)) == after and created_at_of("notes.txt") is None
