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


class Coalesced:
    """A job run in the background whenever it is asked for (an announcement that something changed),
    never two at once: asks that arrive while it runs make one more run after it. A run that fails is
    tried again after `retry_s`, up to `attempts` times; a periodic run (`every`) catches what is left."""

    def __init__(self, job: Callable[[], Awaitable[object]], name: str, retry_s: float = 1.0,
                 attempts: int = 5) -> None:
        self.job, self.name, self.retry_s, self.attempts = job, name, retry_s, attempts
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def ask(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            for attempt in range(self.attempts):
                try:
                    await self.job()
                    break
                except Exception as exc:  # noqa: BLE001 - retried, and the periodic run catches what is left
                    log.warning("%s failed (%s); attempt %d of %d", self.name, type(exc).__name__, attempt + 1,
                                self.attempts)
                    await asyncio.sleep(self.retry_s)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
