"""The gateway's use case, apart from HTTP: ask the limiter, call a provider, publish what happened."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nats.errors
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

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
                      "llm.completed events that could not be published after retries")


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
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
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
    """Publishes `llm.completed` to JetStream with the request id as Nats-Msg-Id and waits for the ack,
    so that the stream holds one record per request even if a publish is retried."""

    def __init__(self, js: JetStreamContext, attempts: int = 3) -> None:
        self.js = js
        self.attempts = attempts

    async def publish(self, event: LlmCompleted) -> bool:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            retry=retry_if_exception_type((nats.errors.Error, asyncio.TimeoutError)),
            reraise=True,
        )
        try:
            await retrying(self.js.publish, LLM_COMPLETED, event.model_dump_json().encode(), stream="LLM",
                           headers={"Nats-Msg-Id": event.request_id}, timeout=2.0)
        except (TimeoutError, nats.errors.Error) as exc:
            UNPUBLISHED.inc()
            log.error("could not publish llm.completed for %s: %s", event.request_id, type(exc).__name__)
            return False
        return True


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

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.router.aclose()
