"""Which backups to delete. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

ORPHAN_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class StoredBackup:
    name: str
    created_at: datetime
    complete: bool  # its manifest exists, so it was uploaded and verified


def to_delete(backups: Sequence[StoredBackup], now: datetime, retention: timedelta, keep_last: int) -> list[str]:
    """Complete backups older than the retention, never the newest one and never fewer than `keep_last`
    complete ones left; incomplete leftovers older than a day (a run that died) go too."""
    complete = sorted((b for b in backups if b.complete), key=lambda b: b.created_at, reverse=True)
    protected = {b.name for b in complete[: max(1, keep_last)]}
    doomed = [b.name for b in complete if b.name not in protected and now - b.created_at > retention]
    doomed += [b.name for b in backups if not b.complete and now - b.created_at > ORPHAN_GRACE]
    return sorted(doomed)
