"""The gateway's use case, apart from HTTP: ask the limiter, call a provider, publish what happened."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from prometheus_client import Counter

from services.api.callers import Caller
from services.api.providers import ProviderCall, ProviderError, ProviderRouter, ProvidersFailed, ProviderStreamBroken
from services.api.usage import (
    NO_USAGE,
    StreamTally,
    TokenCounter,
    Usage,
    billed_attempts,
    billed_prompt,
    prompt_chars,
    prompt_tokens,
    usage_of_answer,
)
from shared.events import BilledAttempt, LimitDecision, LimitRequest, LlmCompleted, Policy
from shared.policy import ModelConfig

log = logging.getLogger(__name__)

PROVIDER_CALLS = Counter("costwarden_api_provider_calls_total", "Provider calls by outcome", ["provider", "outcome"])
ESTIMATED = Counter("costwarden_api_estimated_usage_total",
                    "Calls whose usage the gateway counted because the provider sent none", ["model"])


class UnknownModel(Exception):
    pass


@dataclass(frozen=True)
class CallContext:
    request_id: str
    caller: Caller
    client_ip: str
    endpoint: str
    prompt_tokens: int
    max_tokens: int | None
    choices: int = 1
    policy: Policy = "standard"
    session_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


class LimiterClient(Protocol):
    async def ask(self, request: LimitRequest) -> LimitDecision:
        """The limiter's decision; when no limiter answers, the configured failure mode's."""
        ...


class CompletionPublisher(Protocol):
    async def publish(self, event: LlmCompleted) -> None:
        """Record one call; never raises (what cannot be sent now is kept and sent later)."""
        ...

    async def drain(self, timeout_s: float) -> None: ...


PROVIDER_STREAM_ERRORS = (ProviderStreamBroken, ValueError)  # a broken connection, a chunk that is not JSON
# Above this many characters a prompt is counted in a thread, so that one huge prompt does not stall
# every other call on the event loop.
COUNT_IN_THREAD_CHARS = 20_000


def sse_error(message: str, code: str) -> bytes:
    """An error inside an event stream, in OpenAI's shape (the openai SDK raises it as an APIError)."""
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


class BilledTo(NamedTuple):
    """Who bills a call: the provider and model of the attempt that answered (for a call no provider
    answered: the last attempt its provider billed, else the last one tried), and the other attempts
    their providers billed."""

    provider: str
    served_model: str | None
    others: list[BilledAttempt]

    @classmethod
    def answer(cls, call: ProviderCall, prompt_estimate: int) -> BilledTo:
        failed = call.failed_attempts
        billed = billed_attempts(((a.provider, a.served_model) for a in failed if a.billable), prompt_estimate) \
            if failed else []
        return cls(call.provider, call.upstream_model, billed)

    @classmethod
    def failure(cls, attempts: Sequence[ProviderError], prompt_estimate: int) -> tuple[BilledTo, Usage]:
        """Who bills a call that failed, and the usage of the attempt named."""
        billed = [a for a in attempts if a.billable]
        named = billed[-1] if billed else attempts[-1] if attempts else None
        if named is None:
            return cls("none", None, []), NO_USAGE
        others = billed_attempts(((a.provider, a.served_model) for a in billed[:-1]), prompt_estimate)
        return cls(named.provider, named.served_model, others), billed_prompt(prompt_estimate) if billed else NO_USAGE


class Gateway:
    def __init__(self, limiter: LimiterClient, router: ProviderRouter, publisher: CompletionPublisher,
                 models: Mapping[str, ModelConfig], counter: TokenCounter) -> None:
        self.limiter = limiter
        self.router = router
        self.publisher = publisher
        self.models = models
        self.counter = counter
        self._background: set[asyncio.Task[Any]] = set()

    def model(self, name: str) -> ModelConfig:
        """A public model's configuration; UnknownModel when the gateway does not serve it."""
        config = self.models.get(name)
        if config is None:
            raise UnknownModel(name)
        return config

    async def count_prompt(self, payload: Mapping[str, Any]) -> int:
        """The prompt's tokens: what the limiter reserves on, and what is billed if the provider sends
        no usage."""
        if prompt_chars(payload) > COUNT_IN_THREAD_CHARS:
            return await asyncio.to_thread(prompt_tokens, self.counter, payload)
        return prompt_tokens(self.counter, payload)

    async def admit(self, ctx: CallContext, model: str) -> LimitDecision:
        return await self.limiter.ask(LimitRequest(
            request_id=ctx.request_id, user_id=ctx.caller.user_id, client_ip=ctx.client_ip,
            tier=ctx.caller.tier, endpoint=ctx.endpoint, policy=ctx.policy, model=model,
            prompt_tokens_estimate=ctx.prompt_tokens, max_tokens=ctx.max_tokens, choices=ctx.choices,
        ))

    def completed_event(self, ctx: CallContext, model: str, billed_to: BilledTo, started: float, usage: Usage,
                        error: str | None) -> LlmCompleted:
        if usage.source == "estimated":
            ESTIMATED.labels(model).inc()
        return LlmCompleted(
            id=ctx.request_id, request_id=ctx.request_id, user_id=ctx.caller.user_id, session_id=ctx.session_id,
            client_ip=ctx.client_ip, tier=ctx.caller.tier, provider=billed_to.provider, model=model,
            served_model=billed_to.served_model, billed_attempts=billed_to.others,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens, usage_source=usage.source,
            endpoint=ctx.endpoint, success=error is None, error=error,
            latency_ms=int((time.perf_counter() - started) * 1000), tags=dict(ctx.tags), api_key_id=ctx.caller.key_id,
        )

    async def _call(self, ctx: CallContext, model: str, payload: Mapping[str, Any], stream: bool
                    ) -> tuple[ProviderCall, float]:
        started = time.perf_counter()
        try:
            call = await self.router.call(self.model(model).routes, payload, stream=stream)
        except ProvidersFailed as exc:
            PROVIDER_CALLS.labels("none", "failed").inc()
            billed_to, usage = BilledTo.failure(exc.attempts, ctx.prompt_tokens)
            await self.publisher.publish(self.completed_event(ctx, model, billed_to, started, usage, str(exc)))
            raise
        PROVIDER_CALLS.labels(call.provider, "ok").inc()
        return call, started

    async def complete(self, ctx: CallContext, model: str, payload: Mapping[str, Any]) -> ProviderCall:
        call, started = await self._call(ctx, model, payload, stream=False)
        usage = usage_of_answer(self.counter, call.body, ctx.prompt_tokens, ctx.max_tokens)
        billed_to = BilledTo.answer(call, ctx.prompt_tokens)
        await self.publisher.publish(self.completed_event(ctx, model, billed_to, started, usage, None))
        return call

    async def open_stream(self, ctx: CallContext, model: str, payload: Mapping[str, Any]
                          ) -> tuple[ProviderCall, float]:
        """Fallback is possible only until the first byte: the provider is chosen here, before relaying."""
        stream_payload = {**payload, "stream": True,
                          "stream_options": {**(payload.get("stream_options") or {}), "include_usage": True}}
        return await self._call(ctx, model, stream_payload, stream=True)

    def relay(self, ctx: CallContext, model: str, call: ProviderCall, started: float,
              forward_usage_chunk: bool) -> StreamRelay:
        return StreamRelay(self, ctx, model, call, started, forward_usage_chunk)

    def finish_stream(self, call: ProviderCall, unpublished: LlmCompleted | None) -> None:
        """Close the upstream and publish the event of a stream that did not complete, in a task of their
        own: a client's disconnect cancels the task that relays, and anything it awaited after that
        would be cancelled too."""
        self._run_in_background(self._close_and_publish(call, unpublished))

    async def _close_and_publish(self, call: ProviderCall, event: LlmCompleted | None) -> None:
        try:
            await call.close()
        finally:
            if event is not None:
                await self.publisher.publish(event)

    def _run_in_background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, publish_timeout_s: float = 10.0) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.publisher.drain(publish_timeout_s)
        await self.router.aclose()


class StreamRelay:
    """The body of a streamed answer: the provider's Server-Sent Events, relayed chunk by chunk.

    `llm.completed` is published before the closing `[DONE]` when the stream completes; otherwise (the
    client went away, the provider broke the stream) at once, with the usage counted from what was
    relayed. `aclose()` ends it however far it got, even if it never started."""

    def __init__(self, gateway: Gateway, ctx: CallContext, model: str, call: ProviderCall, started: float,
                 forward_usage_chunk: bool) -> None:
        self.gateway = gateway
        self.ctx = ctx
        self.model = model
        self.call = call
        self.started = started
        self.forward_usage_chunk = forward_usage_chunk
        self.tally = StreamTally()
        self._events = self._relay()
        self._finished = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        await self._events.aclose()
        self._finish("client disconnected before the stream began")

    def _finish(self, error: str | None) -> None:
        if not self._finished:
            self._finished = True
            self.gateway.finish_stream(self.call, self._event(error) if error is not None else None)

    def _event(self, error: str | None) -> LlmCompleted:
        """The call's record: the provider's usage if it arrived, else what was relayed, counted."""
        usage = self.tally.usage(self.gateway.counter, self.ctx.prompt_tokens, self.ctx.max_tokens)
        return self.gateway.completed_event(self.ctx, self.model, BilledTo.answer(self.call, self.ctx.prompt_tokens),
                                            self.started, usage, error)

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        error: str | None = "client disconnected before the stream ended"
        try:
            async for line in self.call.lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                self.tally.add(chunk)
                if self.tally.reported is not None and not chunk.get("choices") and not self.forward_usage_chunk:
                    continue
                yield f"data: {data}\n\n".encode()
            else:
                if not self.tally.finished:  # a stream may omit [DONE], but not the end of its answer
                    error = f"{self.call.provider} ended the stream before the answer was finished"
                    yield sse_error(error, "provider_stream_incomplete")
                    return
            await self.gateway.publisher.publish(self._event(None))
            error = None
            yield b"data: [DONE]\n\n"
        except PROVIDER_STREAM_ERRORS as exc:
            cause = str(exc) if isinstance(exc, ProviderStreamBroken) else type(exc).__name__
            error = f"{self.call.provider} stream interrupted: {cause}"
            log.warning("stream of request %s interrupted after %d chunks: %s", self.ctx.request_id,
                        self.tally.chunks, cause)
            yield sse_error(error, "provider_stream_interrupted")
        finally:
            self._finish(error)
