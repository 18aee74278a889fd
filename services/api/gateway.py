"""The gateway's use case, apart from HTTP: ask the limiter, call a provider, publish what happened."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import nats.errors
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from services.api.callers import Caller
from services.api.providers import ProviderCall, ProviderRouter, ProvidersFailed
from services.api.usage import (
    StreamTally,
    TokenCounter,
    Usage,
    billed_prompt,
    prompt_chars,
    prompt_tokens,
    usage_of_answer,
)
from shared.events import LimitDecision, LimitRequest, LlmCompleted, Policy
from shared.settings import ModelRoute
from shared.subjects import LLM_COMPLETED, LLM_REQUEST

log = logging.getLogger(__name__)

LIMITER_DECISIONS = Counter("costwarden_api_limiter_decisions_total", "Limiter answers seen by the gateway",
                            ["outcome"])
PROVIDER_CALLS = Counter("costwarden_api_provider_calls_total", "Provider calls by outcome", ["provider", "outcome"])
UNPUBLISHED = Counter("costwarden_api_unpublished_events_total",
                      "llm.completed events lost: the backlog was full, or NATS did not take them before shutdown")
ESTIMATED = Counter("costwarden_api_estimated_usage_total",
                    "Calls whose usage the gateway counted because the provider sent none", ["model"])
BACKLOG = Gauge("costwarden_api_unpublished_backlog", "llm.completed events waiting for NATS to take them",
                multiprocess_mode="livesum")
PUBLISH_ERRORS = (nats.errors.Error, TimeoutError)


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
    policy: Policy = "standard"
    session_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


class LimiterClient:
    """Asks `llm.request` (core NATS request-reply; any limiter replica answers)."""

    def __init__(self, nc: Nats, timeout_s: float, failure_mode: Literal["closed", "open"]) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.failure_mode = failure_mode

    async def ask(self, request: LimitRequest) -> LimitDecision:
        try:
            reply = await self.nc.request(LLM_REQUEST, request.model_dump_json().encode(), timeout=self.timeout_s)
        except nats.errors.Error as exc:  # timeout, no responders, connection closed or reconnecting
            allowed = self.failure_mode == "open"
            LIMITER_DECISIONS.labels("unavailable").inc()
            log.warning("no limiter answered request %s (%s); failing %s", request.request_id,
                        type(exc).__name__, self.failure_mode)
            reason = ("Rate limiter unavailable; request allowed without a limit check" if allowed
                      else "Rate limiter unavailable; try again shortly")
            return LimitDecision.unavailable(request, allowed, reason)
        decision = LimitDecision.model_validate_json(reply.data)
        LIMITER_DECISIONS.labels("allowed" if decision.allowed else "denied").inc()
        return decision


class CompletionPublisher:
    """Publishes `llm.completed` to JetStream with the request id as Nats-Msg-Id, so that the stream
    holds one record per request however often a publish is retried.

    While NATS takes events, the caller waits for the ack: an answered call is a recorded call. When a
    publish fails or NATS is away, the event joins a bounded backlog that one background task retries,
    oldest first, until JetStream takes it. An outage then neither adds the ack timeout to every call
    nor loses what was served; only a backlog over `backlog_limit` events (or one still unsent when the
    process exits) is lost, and counted."""

    def __init__(self, nc: Nats, js: JetStreamContext, *, ack_timeout_s: float = 2.0,
                 backlog_limit: int = 100_000) -> None:
        self.nc = nc
        self.js = js
        self.ack_timeout_s = ack_timeout_s
        self.backlog_limit = backlog_limit
        self.backlog: deque[LlmCompleted] = deque()
        self._retrier: asyncio.Task[None] | None = None

    async def publish(self, event: LlmCompleted) -> None:
        if self.nc.is_connected and not self.backlog:
            try:
                await self._publish_once(event)
                return
            except PUBLISH_ERRORS as exc:
                log.warning("llm.completed for %s not acked (%s); keeping it to retry", event.request_id,
                            type(exc).__name__)
        self._keep(event)

    async def _publish_once(self, event: LlmCompleted) -> None:
        await self.js.publish(LLM_COMPLETED, event.model_dump_json().encode(), stream="LLM",
                              headers={"Nats-Msg-Id": event.request_id}, timeout=self.ack_timeout_s)

    def _keep(self, event: LlmCompleted) -> None:
        if len(self.backlog) >= self.backlog_limit:
            UNPUBLISHED.inc()
            log.error("backlog of %d unpublished events is full; llm.completed for %s is lost",
                      len(self.backlog), event.request_id)
            return
        self.backlog.append(event)
        BACKLOG.set(len(self.backlog))
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry_backlog(), name="llm-completed-backlog")

    async def _retry_backlog(self) -> None:
        retrying = AsyncRetrying(wait=wait_exponential(multiplier=0.2, max=5.0),
                                 retry=retry_if_exception_type(PUBLISH_ERRORS), reraise=True)
        while self.backlog:
            await retrying(self._publish_once, self.backlog[0])
            self.backlog.popleft()
            BACKLOG.set(len(self.backlog))
        log.info("backlog of unpublished llm.completed events cleared")

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: give the backlog up to `timeout_s` to reach JetStream, then count what is left."""
        if self._retrier is None or self._retrier.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._retrier), timeout_s)
        except TimeoutError:
            self._retrier.cancel()
            UNPUBLISHED.inc(len(self.backlog))
            log.error("%d llm.completed events were never published: NATS did not take them before shutdown",
                      len(self.backlog))


PROVIDER_STREAM_ERRORS = (httpx.HTTPError, ValueError)  # transport failures, and chunks that are not JSON
# Above this many characters a prompt is counted in a thread, so that one huge prompt does not stall
# every other call on the event loop.
COUNT_IN_THREAD_CHARS = 20_000


def sse_error(message: str, code: str) -> bytes:
    """An error inside an event stream, in OpenAI's shape (the openai SDK raises it as an APIError)."""
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


class Gateway:
    def __init__(self, limiter: LimiterClient, router: ProviderRouter, publisher: CompletionPublisher,
                 model_map: Mapping[str, Sequence[ModelRoute]], counter: TokenCounter) -> None:
        self.limiter = limiter
        self.router = router
        self.publisher = publisher
        self.model_map = model_map
        self.counter = counter
        self._background: set[asyncio.Task[Any]] = set()

    def routes_for(self, model: str) -> Sequence[ModelRoute]:
        routes = self.model_map.get(model)
        if not routes:
            raise UnknownModel(model)
        return routes

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
            prompt_tokens_estimate=ctx.prompt_tokens, max_tokens=ctx.max_tokens,
        ))

    def completed_event(self, ctx: CallContext, provider: str, model: str, started: float, usage: Usage,
               error: str | None) -> LlmCompleted:
        if usage.source == "estimated":
            ESTIMATED.labels(model).inc()
        return LlmCompleted(
            id=ctx.request_id, request_id=ctx.request_id, user_id=ctx.caller.user_id, session_id=ctx.session_id,
            client_ip=ctx.client_ip, tier=ctx.caller.tier, provider=provider, model=model,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens, usage_source=usage.source,
            endpoint=ctx.endpoint, success=error is None, error=error,
            latency_ms=int((time.perf_counter() - started) * 1000), tags=dict(ctx.tags),
        )

    async def _call(self, ctx: CallContext, model: str, payload: Mapping[str, Any], stream: bool
                    ) -> tuple[ProviderCall, float]:
        started = time.perf_counter()
        try:
            call = await self.router.call(self.routes_for(model), payload, stream=stream)
        except ProvidersFailed as exc:
            PROVIDER_CALLS.labels("none", "failed").inc()
            last = exc.errors[-1].provider if exc.errors else "none"
            usage = billed_prompt(ctx.prompt_tokens, sum(attempt.billable for attempt in exc.attempts))
            await self.publisher.publish(self.completed_event(ctx, last, model, started, usage, str(exc)))
            raise
        PROVIDER_CALLS.labels(call.provider, "ok").inc()
        return call, started

    async def complete(self, ctx: CallContext, model: str, payload: Mapping[str, Any]) -> ProviderCall:
        call, started = await self._call(ctx, model, payload, stream=False)
        usage = usage_of_answer(self.counter, call.body, ctx.prompt_tokens, ctx.max_tokens)
        await self.publisher.publish(self.completed_event(ctx, call.provider, model, started, usage, None))
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

    def finish_stream(self, relay: StreamRelay, error: str | None) -> None:
        """Close the upstream and, for a stream that did not complete, publish its event. Both run in a
        task of their own: a client's disconnect cancels the task that relays, and anything it awaited
        after that would be cancelled too."""
        if error is None:
            self._run_in_background(relay.call.close())
            return
        usage = relay.tally.usage(self.counter, relay.ctx.prompt_tokens, relay.ctx.max_tokens)
        event = self.completed_event(relay.ctx, relay.call.provider, relay.model, relay.started, usage, error)
        self._run_in_background(self._close_and_publish(relay.call, event))

    async def _close_and_publish(self, call: ProviderCall, event: LlmCompleted) -> None:
        try:
            await call.close()
        finally:
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
            self.gateway.finish_stream(self, error)

    async def _relay(self) -> AsyncIterator[bytes]:
        assert self.call.stream is not None
        error: str | None = "client disconnected before the stream ended"
        try:
            async for line in self.call.stream.aiter_lines():
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
            usage = self.tally.usage(self.gateway.counter, self.ctx.prompt_tokens, self.ctx.max_tokens)
            await self.gateway.publisher.publish(
                self.gateway.completed_event(self.ctx, self.call.provider, self.model, self.started, usage, None))
            error = None
            yield b"data: [DONE]\n\n"
        except PROVIDER_STREAM_ERRORS as exc:
            error = f"{self.call.provider} stream interrupted: {type(exc).__name__}"
            log.warning("stream of request %s interrupted after %d chunks: %s", self.ctx.request_id,
                        self.tally.chunks, type(exc).__name__)
            yield sse_error(error, "provider_stream_interrupted")
        finally:
            self._finish(error)
