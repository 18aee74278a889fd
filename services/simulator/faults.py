"""How the simulator is told to misbehave (POST /_sim/faults), in every mode."""

from __future__ import annotations

from typing import Any


class BrokenStream(Exception):
    """Raised inside a streamed answer to cut its connection (the `break_after` fault)."""


class Faults:
    """What POST /_sim/faults asked for (each call replaces every fault)."""

    def __init__(self, body: dict[str, Any] | None = None) -> None:
        body = body or {}
        self.status: int | None = body.get("status")
        self.count = int(body.get("count", 0))
        self.delay_s = float(body.get("delay_s", 0))
        self.retry_after = body.get("retry_after")
        self.chunk_delay_s = float(body.get("chunk_delay_s", 0))
        self.break_after: int | None = body.get("break_after")
        self.omit_usage = bool(body.get("omit_usage", False))
        self.error_after: int | None = body.get("error_after")
