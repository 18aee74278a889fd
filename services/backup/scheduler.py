"""The backup schedule: at each cron slot (UTC) one `schedule.backup` tick. Every replica runs it; the
slot is the tick's message id, so that JetStream keeps one tick a slot whatever the replicas."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from croniter import croniter

from shared.events import BackupTick

log = logging.getLogger(__name__)


def next_slot(schedule: str, after: datetime) -> datetime:
    return croniter(schedule, after).get_next(datetime)


async def run_schedule(schedule: str, publish_tick: Callable[[BackupTick], Awaitable[None]],
                       clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """Publish one tick per slot until cancelled; a tick that cannot be published is logged and the
    next slot is tried all the same."""
    while True:
        slot = next_slot(schedule, clock())
        await asyncio.sleep(max(0.0, (slot - clock()).total_seconds()))
        tick = BackupTick(slot=slot.isoformat())
        try:
            await publish_tick(tick)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the schedule goes on
            log.error("could not publish the backup tick for %s: %s", tick.slot, type(exc).__name__)
