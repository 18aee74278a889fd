"""The steps every LLM call of the gateway takes before and around the provider: who is calling and
from where, the limiter's answer (429 or 503 when it says no), the plain call with its failures
answered as 502/504."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request

from services.api.api_state import ApiState
from services.api.callers import Caller, client_ip
from services.api.gateway import CallContext
from services.api.http_edge import ApiError, RateLimited, parse_tags, provider_failure
from services.api.providers import ProviderCall, ProvidersFailed
from services.api.ratelimit_headers import ratelimit_headers
from shared.events import Policy


async def call_context(request: Request, state: ApiState, caller: Caller, endpoint: str, policy: Policy,
                       session_id: str | None, payload: dict[str, Any], max_tokens: int, choices: int = 1
                       ) -> CallContext:
    tags = parse_tags(request.headers.get("x-costwarden-tags"))
    peer = request.client.host if request.client else None
    return CallContext(
        request_id=uuid.uuid4().hex, caller=caller,
        client_ip=client_ip(peer, request.headers.get("x-forwarded-for"), state.trusted_proxies),
        endpoint=endpoint, prompt_tokens=await state.gateway.count_prompt(payload), max_tokens=max_tokens,
        choices=choices, policy=policy, session_id=session_id or request.headers.get("x-session-id"), tags=tags,
    )


async def admit(state: ApiState, ctx: CallContext, model: str) -> dict[str, str]:
    """The headers of an admitted call; raises what the caller is answered when it is not admitted."""
    decision = await state.gateway.admit(ctx, model)
    if decision.allowed:
        return {"X-Request-Id": ctx.request_id, **ratelimit_headers(decision)}
    if decision.limited_by == "unavailable":
        raise ApiError(503, decision.reason or "rate limiter unavailable", type_="service_unavailable",
                       code="limiter_unavailable", headers={"Retry-After": str(int(decision.retry_after_s))})
    raise RateLimited(decision, state.settings.upgrade_url)


async def complete(state: ApiState, ctx: CallContext, model: str, payload: dict[str, Any]) -> ProviderCall:
    try:
        return await state.gateway.complete(ctx, model, payload)
    except ProvidersFailed as exc:
        raise provider_failure(exc, ctx) from None
