"""The relay of a streamed answer: the provider's Server-Sent Events passed on chunk by chunk, counted
as they go, and the call recorded however the stream ends."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any

from services.api.calls import BilledTo, CallContext, CompletionPublisher, completed_event
from services.api.providers import ProviderCall, ProviderStreamBroken
from services.api.response_cache import AnswerKeeper, CachedAnswer
from services.api.usage import StreamTally, TokenCounter
from shared.events import LlmCompleted

log = logging.getLogger(__name__)

PROVIDER_STREAM_ERRORS = (ProviderStreamBroken, ValueError)  # a broken connection, a chunk that is not JSON


def sse_error(message: str, code: str) -> bytes:
    """An error inside an event stream, in OpenAI's shape (the openai SDK raises it as an APIError)."""
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


def _error_text(error: Any) -> str:
    """The message of an error a provider sent inside its stream (OpenAI's shape, or anything else)."""
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return json.dumps(error) if not isinstance(error, str) else error


class BackgroundTasks:
    """Work that must finish even if the task that asked for it is cancelled (a client's disconnect
    cancels the task that relays, and anything it awaited after that would be cancelled too)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class StreamRelay:
    """The body of a streamed answer.

    `llm.completed` is published before the closing `[DONE]` when the stream completes: every choice
    has its finish_reason and no chunk carried an `error`, with or without `[DONE]`. Otherwise (the
    client went away, the provider broke the stream or sent an error in it) it is recorded as failed at
    once, with the usage counted from what was relayed. `aclose()` ends it however far it got, even if
    it never started; the upstream is closed, and an unfinished call recorded, in `background`. With
    `keep`, a stream that completes with the provider's usage is kept with every chunk the provider sent
    (unless they are more than an entry may hold)."""

    def __init__(self, call: ProviderCall, ctx: CallContext, started: float, counter: TokenCounter,
                 publisher: CompletionPublisher, background: BackgroundTasks, forward_usage_chunk: bool,
                 keep: AnswerKeeper | None = None) -> None:
        self.call = call
        self.ctx = ctx
        self.started = started
        self.counter = counter
        self.publisher = publisher
        self.background = background
        self.forward_usage_chunk = forward_usage_chunk
        self.tally = StreamTally()
        self.keep = keep
        self._kept: list[str] = []
        self._kept_bytes = 0
        self._provider_error: str | None = None
        self._events = self._relay()
        self._finished = False

    @property
    def provider(self) -> str:
        return self.call.provider

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        await self._events.aclose()
        self._finish("client disconnected before the stream began")

    def _finish(self, error: str | None) -> None:
        if not self._finished:
            self._finished = True
            self.background.run(self._close_and_publish(self._event(error) if error is not None else None))

    async def _close_and_publish(self, event: LlmCompleted | None) -> None:
        try:
            await self.call.close()
        finally:
            if event is not None:
                await self.publisher.publish(event)

    def _event(self, error: str | None) -> LlmCompleted:
        """The call's record: the provider's usage if it arrived, else what was relayed, counted."""
        usage = self.tally.usage(self.counter, self.ctx.prompt_tokens, self.ctx.max_tokens)
        return completed_event(self.ctx, BilledTo.answer(self.call, self.ctx.prompt_tokens), self.started, usage,
                               error)

    def _take(self, data: str) -> dict[str, Any]:
        """A chunk the provider sent: counted, an `error` in it noted, and collected for `keep`."""
        chunk: dict[str, Any] = json.loads(data)
        self.tally.add(chunk)
        if "error" in chunk and self._provider_error is None:
            self._provider_error = _error_text(chunk["error"])
        if self.keep is not None:
            self._collect(data)
        return chunk

    def _unfinished(self) -> str | None:
        """Why a stream that ended is not a complete answer, or None when it is."""
        if self._provider_error is not None:
            return f"{self.call.provider} sent an error in the stream: {self._provider_error}"
        if not self.tally.finished:  # with or without [DONE], an answer ends with its finish_reason
            return f"{self.call.provider} ended the stream before the answer was finished"
        return None

    def _collect(self, data: str) -> None:
        self._kept_bytes += len(data) + 1
        if self._kept_bytes <= self.keep.limit_bytes:  # type: ignore[union-attr]
            self._kept.append(data)

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        error: str | None = "client disconnected before the stream ended"
        try:
            async for line in self.call.lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = self._take(data)
                if self.tally.reported is not None and not chunk.get("choices") and not self.forward_usage_chunk:
                    continue
                yield f"data: {data}\n\n".encode()
            unfinished = self._unfinished()
            if unfinished is not None:
                error = unfinished
                if self._provider_error is None:  # the provider's own error chunk was relayed as it came
                    yield sse_error(error, "provider_stream_incomplete")
                return
            event = self._event(None)
            await self.publisher.publish(event)
            error = None
            if self.keep is not None and self.tally.reported is not None and self._kept_bytes <= self.keep.limit_bytes:
                usage = self.tally.usage(self.counter, self.ctx.prompt_tokens, self.ctx.max_tokens)
                await self.keep(CachedAnswer(event.provider, event.served_model, usage, 0.0, chunks=tuple(self._kept)))
            yield b"data: [DONE]\n\n"
        except PROVIDER_STREAM_ERRORS as exc:
            cause = str(exc) if isinstance(exc, ProviderStreamBroken) else type(exc).__name__
            error = f"{self.call.provider} stream interrupted: {cause}"
            log.warning("stream of request %s interrupted after %d chunks: %s", self.ctx.request_id,
                        self.tally.chunks, cause)
            yield sse_error(error, "provider_stream_interrupted")
        finally:
            self._finish(error)
