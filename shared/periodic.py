"""Periodic jobs of a service (sweeps, retention): run, wait, run again, whatever a round does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(interval_s: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run `job` now and then every `interval_s` until cancelled. A round that fails is logged and
    tried again at the next interval: the loop itself never dies."""
    while True:
        try:
            await job()
        except Exception as exc:  # noqa: BLE001 - any failure of a round is retried next interval
            log.warning("%s failed: %s", name, type(exc).__name__)
        await asyncio.sleep(interval_s)
