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

import nats.errors
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from services.api.callers import Caller
from services.api.providers import ProviderCall, ProviderRouter, ProvidersFailed
from shared.events import LimitDecision, LimitRequest, LlmCompleted, Policy
from shared.settings import ModelRoute
from shared.subjects import LLM_COMPLETED, LLM_REQUEST

log = logging.getLogger(__name__)

LIMITER_DECISIONS = Counter("costwarden_api_limiter_decisions_total", "Limiter answers seen by the gateway",
                            ["outcome"])
PROVIDER_CALLS = Counter("costwarden_api_provider_calls_total", "Provider calls by outcome", ["provider", "outcome"])
UNPUBLISHED = Counter("costwarden_api_unpublished_events_total",
                      "llm.completed events lost: the backlog was full, or NATS did not take them before shutdown")
BACKLOG = Gauge("costwarden_api_unpublished_backlog", "llm.completed events waiting for NATS to take them")
PUBLISH_ERRORS = (nats.errors.Error, TimeoutError)


class UnknownModel(Exception):
    pass


@dataclass(frozen=True)
class CallContext:
    request_id: str
    caller: Caller
    client_ip: str
    endpoint: str
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


def usage_of(body: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens from an OpenAI-style usage object."""
    usage = (body or {}).get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0))


class Gateway:
    def __init__(self, limiter: LimiterClient, router: ProviderRouter, publisher: CompletionPublisher,
                 model_map: Mapping[str, Sequence[ModelRoute]]) -> None:
        self.limiter = limiter
        self.router = router
        self.publisher = publisher
        self.model_map = model_map
        self._background: set[asyncio.Task[Any]] = set()

    def routes_for(self, model: str) -> Sequence[ModelRoute]:
        routes = self.model_map.get(model)
        if not routes:
            raise UnknownModel(model)
        return routes

    async def admit(self, ctx: CallContext, model: str, prompt_estimate: int, max_tokens: int | None) -> LimitDecision:
        return await self.limiter.ask(LimitRequest(
            request_id=ctx.request_id, user_id=ctx.caller.user_id, client_ip=ctx.client_ip,
            tier=ctx.caller.tier, endpoint=ctx.endpoint, policy=ctx.policy, model=model,
            prompt_tokens_estimate=prompt_estimate, max_tokens=max_tokens,
        ))

    def _event(self, ctx: CallContext, provider: str, model: str, started: float, usage: tuple[int, int, int],
               error: str | None) -> LlmCompleted:
        prompt, completion, cached = usage
        return LlmCompleted(
            id=ctx.request_id, request_id=ctx.request_id, user_id=ctx.caller.user_id, session_id=ctx.session_id,
            client_ip=ctx.client_ip, tier=ctx.caller.tier, provider=provider, model=model,
            prompt_tokens=prompt, completion_tokens=completion, cached_prompt_tokens=cached,
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
            await self.publisher.publish(self._event(ctx, last, model, started, (0, 0, 0), str(exc)))
            raise
        PROVIDER_CALLS.labels(call.provider, "ok").inc()
        return call, started

    async def complete(self, ctx: CallContext, model: str, payload: Mapping[str, Any]) -> ProviderCall:
        call, started = await self._call(ctx, model, payload, stream=False)
        await self.publisher.publish(self._event(ctx, call.provider, model, started, usage_of(call.body), None))
        return call

    async def open_stream(self, ctx: CallContext, model: str, payload: Mapping[str, Any]
                          ) -> tuple[ProviderCall, float]:
        """Fallback is possible only until the first byte: the provider is chosen here, before relaying."""
        stream_payload = {**payload, "stream": True,
                          "stream_options": {**(payload.get("stream_options") or {}), "include_usage": True}}
        return await self._call(ctx, model, stream_payload, stream=True)

    async def relay(self, ctx: CallContext, model: str, call: ProviderCall, started: float,
                    forward_usage_chunk: bool) -> AsyncIterator[bytes]:
        """Relay the provider's Server-Sent Events; publish `llm.completed` (usage from the final chunk)
        before the closing `[DONE]`, or when the stream breaks or the client goes away."""
        assert call.stream is not None
        usage = (0, 0, 0)
        error: str | None = "stream ended before [DONE]"
        published = False
        try:
            async for line in call.stream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    error = None
                    published = True
                    await self.publisher.publish(self._event(ctx, call.provider, model, started, usage, None))
                    yield b"data: [DONE]\n\n"
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = usage_of(chunk)
                    if not chunk.get("choices") and not forward_usage_chunk:
                        continue
                yield f"data: {data}\n\n".encode()
        except Exception as exc:
            error = f"stream interrupted: {type(exc).__name__}"
            raise
        finally:
            await call.stream.aclose()
            if not published:
                event = self._event(ctx, call.provider, model, started, usage, error)
                self._run_in_background(self.publisher.publish(event))

    def _run_in_background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, publish_timeout_s: float = 10.0) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.publisher.drain(publish_timeout_s)
        await self.router.aclose()
