"""Waiting for what other processes do: one helper for every test."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
    """Call `check` (plain or async) until it returns something true or `timeout_s` passes; return its
    last result, so that the caller's assertion shows what was last seen."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(interval_s)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """The same for code that is not async (starting servers): raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")
