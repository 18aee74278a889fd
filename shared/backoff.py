"""How long to wait before trying again, one rule for every retry in costwarden: doubling from an initial
wait up to a ceiling, plus an optional jitter so that what failed together does not retry together."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_s(attempt: int, initial_s: float, max_s: float, jitter: float = 0.0) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): `initial_s` doubling up to `max_s`,
    plus `jitter` (0 to 1) of `initial_s`."""
    return min(max_s, initial_s * 2 ** min(attempt - 1, 64)) + jitter * initial_s


async def retrying(operation: Callable[[], Awaitable[T]], retry_on: tuple[type[BaseException], ...],
                   initial_s: float, max_s: float, patience_s: float = math.inf) -> T:
    """What `operation` returns, asked again after each failure of a kind in `retry_on` (waiting
    `backoff_s`) until it answers or `patience_s` have passed since the first try; then its last error."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except retry_on:
            if time.monotonic() - started >= patience_s:
                raise
        await asyncio.sleep(backoff_s(attempt, initial_s, max_s))
