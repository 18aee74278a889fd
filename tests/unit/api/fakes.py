"""In-memory fakes of the api's ports that several tests use."""

from __future__ import annotations

from shared.events import LlmCompleted


class Words:
    """A token counter: one token a word."""

    def count(self, text: str) -> int:
        return len(text.split())


class Recorded:
    """A completion publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[LlmCompleted] = []

    async def publish(self, event: LlmCompleted) -> None:
        self.events.append(event)

    async def drain(self, timeout_s: float) -> None: ...
