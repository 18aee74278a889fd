"""Waiting for what other processes do: one helper for every test."""

from __future__ import annotations

import asyncio
import inspect
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
