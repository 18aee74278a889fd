"""The synchronous twin of `Guard`, for scripts and workers that are not async:

    with SyncGuard.connect() as guard:
        with guard.call(user_id="u1", tier="free", model="gpt-4o-mini", provider="openai",
                        max_tokens=200, prompt=messages) as call:
            answer = client.chat.completions.create(...)
            call.record(answer.usage)

        client = guard.wrap(openai.OpenAI(), user_id="u1", tier="free")

The same `Guard` runs on an event loop of its own in a background thread; each method waits for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from costwarden_client.contract import BilledAttempt, LimitDecision, LlmCompleted, Policy
from costwarden_client.guard import Call, Guard
from costwarden_client.openai_wrap import Caller, GuardedOpenAI, SdkRequest
from costwarden_client.tokens import TokenCounter, Usage

T = TypeVar("T")


class SyncGuard:
    def __init__(self, guard: Guard, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.guard = guard
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(cls, servers: str | Sequence[str] | None = None, **options: Any) -> SyncGuard:
        """As `Guard.connect`, with the same arguments."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="costwarden-guard", daemon=True)
        thread.start()
        try:
            guard = asyncio.run_coroutine_threadsafe(Guard.connect(servers, **options), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(guard, loop, thread)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the guard's loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("SyncGuard methods cannot be called from its own loop's thread")
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        return future.result()

    @property
    def count_tokens(self) -> TokenCounter:
        return self.guard.count_tokens

    def call(self, **arguments: Any) -> SyncCall:
        """A guarded call (a context manager), with `Guard.call`'s arguments."""
        return SyncCall(self, self.guard.call(**arguments))

    def wrap(self, client: Any, *, tier: str, user_id: str | None = None, provider: str = "openai",
             client_ip: str | None = None, tags: Mapping[str, str] | None = None,
             session_id: str | None = None, policy: Policy = "standard") -> GuardedOpenAI:
        """`client` (an `openai.OpenAI`) whose `chat.completions.create` and `embeddings.create`, plain or
        streamed, are guarded calls for this caller."""
        caller = Caller(tier=tier, user_id=user_id, provider=provider, client_ip=client_ip,
                        tags=dict(tags or {}), session_id=session_id, policy=policy)

        def admit(request: SdkRequest) -> SyncCall:
            return self.call(**caller.call_arguments(request)).admit()

        return GuardedOpenAI(client, admit, self.count_tokens)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self.run(self.guard.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncCall:
    """`Call`, waited for."""

    def __init__(self, guard: SyncGuard, call: Call) -> None:
        self._guard = guard
        self.call = call

    @property
    def request_id(self) -> str:
        return self.call.request_id

    @property
    def prompt_tokens(self) -> int:
        return self.call.prompt_tokens

    @property
    def decision(self) -> LimitDecision | None:
        return self.call.decision

    @property
    def event(self) -> LlmCompleted | None:
        return self.call.event

    def admit(self) -> SyncCall:
        self._guard.run(self.call.admit())
        return self

    def record(self, usage: Any, *, served_model: str | None = None, provider: str | None = None,
               success: bool = True, error: str | None = None,
               billed_attempts: Sequence[BilledAttempt] = ()) -> None:
        self._guard.run(self.call.record(usage, served_model=served_model, provider=provider, success=success,
                                         error=error, billed_attempts=billed_attempts))

    def finish(self, exc: BaseException | None = None, usage: Usage | None = None, error: str | None = None) -> None:
        self._guard.run(self.call.finish(exc, usage, error))

    def __enter__(self) -> SyncCall:
        return self.admit()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish(exc)
