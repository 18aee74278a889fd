"""The gateway's HTTP edge: how a request becomes a call (body, caller, model, limits, tags, client
address) and how the admission's answer becomes the HTTP one (headers, 429 or 503), each in one
place. Failures are answered through http/errors.py."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import Request
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from services.api.admission import Admission, Denied, Granted, ModelRefused, Unavailable, UnknownModel, WrongEndpoint
from services.api.callers import Caller, InvalidCredentials, KeyStoreUnavailable, bearer_token, client_ip
from services.api.calls import CallContext
from services.api.http.errors import ApiError, RateLimited, validation_error
from services.api.http.state import ApiState
from services.api.ratelimit_headers import ratelimit_headers, too_many_requests
from services.api.response_cache import CACHE_HEADER, TTL_HEADER, AnswerKeeper, BadCacheHeader, CachedAnswer, CachePlan
from shared.events import Policy, new_id
from shared.policy import ModelConfig, ModelServes

CACHE_RESULTS = Counter("costwarden_api_cache_total", "Calls of models with the response cache on, by what the "
                        "cache did: hit, miss or bypass", ["model", "result"])
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TAGS = 16

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, model: type[M], max_bytes: int) -> M:
    """The JSON body as `model`: 413 past `max_bytes` (declared or streamed), 400 naming what is wrong."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"request body is larger than {max_bytes} bytes", code="body_too_large")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def caller_of(request: Request, admission: Admission) -> Caller:
    try:
        return await admission.caller(bearer_token(request.headers.get("authorization")))
    except InvalidCredentials as exc:
        raise ApiError(401, str(exc), code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}) from None
    except KeyStoreUnavailable:
        raise ApiError(503, "API keys cannot be checked right now; retry shortly", code="key_store_unavailable",
                       headers={"Retry-After": "5"}) from None


ENDPOINTS: dict[ModelServes, str] = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings"}


def public_model(admission: Admission, name: str, serves: ModelServes = "chat") -> ModelConfig:
    try:
        return admission.model(name, serves)
    except UnknownModel:
        raise ApiError(404, f"The model '{name}' does not exist or is not served by this gateway",
                       param="model", code="model_not_found") from None
    except WrongEndpoint as exc:
        other: ModelServes = exc.args[0]
        raise ApiError(400, f"The model '{name}' serves {other}: call it on {ENDPOINTS[other]}", param="model",
                       code="model_not_supported") from None


def completion_tokens(requested: int | None, param: str, model: ModelConfig, default: int, cap: int,
                      choices: int = 1) -> int:
    """What each choice of a call may generate: what the caller asked for (from 1 up to the model's
    ceiling and the reservation cap), else `default` within them; every choice together within the cap,
    so that the limiter reserves all that the provider may generate."""
    ceiling = min(cap, model.max_tokens or cap)
    if requested is not None and not 1 <= requested <= ceiling:
        raise ApiError(400, f"{param} must be between 1 and {ceiling}", param=param, code="invalid_value")
    limit = requested if requested is not None else min(default, ceiling)
    if choices * limit > cap:
        raise ApiError(400, f"n times {param} ({choices} x {limit}) must not exceed {cap} tokens", param="n",
                       code="invalid_value")
    return limit


def parse_tags(header: str | None) -> dict[str, str]:
    """X-Costwarden-Tags: "feature=search, team=growth" -> cost allocation tags."""
    if not header:
        return {}
    tags: dict[str, str] = {}
    for pair in header.split(","):
        key, sep, value = pair.strip().partition("=")
        if not sep or not TAG_PATTERN.match(key) or not TAG_PATTERN.match(value):
            raise ApiError(400, "X-Costwarden-Tags must be comma-separated key=value pairs of [A-Za-z0-9_.:-]{1,64}",
                           code="invalid_tags", param="X-Costwarden-Tags")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise ApiError(400, f"at most {MAX_TAGS} tags", code="invalid_tags", param="X-Costwarden-Tags")
    return tags


async def call_context(request: Request, state: ApiState, caller: Caller, model: str, config: ModelConfig,
                       endpoint: str, policy: Policy, session_id: str | None, payload: dict[str, Any],
                       max_tokens: int, choices: int = 1) -> CallContext:
    """The call, with a request id of its own, the public model as resolved, and the prompt's tokens."""
    tags = parse_tags(request.headers.get("x-costwarden-tags"))
    peer = request.client.host if request.client else None
    return CallContext(
        request_id=new_id(), caller=caller,
        client_ip=client_ip(peer, request.headers.get("x-forwarded-for"), state.trusted_proxies),
        endpoint=endpoint, model=model, routes=config.routes, strategy=config.strategy,
        prompt_tokens=await state.admission.prompt_tokens(payload, config.serves), max_tokens=max_tokens,
        choices=choices, policy=policy, session_id=session_id or request.headers.get("x-session-id"), tags=tags,
    )


async def admit(state: ApiState, ctx: CallContext) -> tuple[dict[str, str], CallContext]:
    """The headers of an admitted call, and its context with the team the limiter counted it for (its
    llm.completed says so); raises what the caller is answered when it is not admitted: a denial as the
    original 429, a model outside an allow-list as 403, no limit checked in closed mode as 503."""
    outcome = await state.admission.decide(ctx)
    if isinstance(outcome, Granted):
        team = outcome.decision.team_id
        return ({"X-Request-Id": ctx.request_id, **ratelimit_headers(outcome.decision)},
                ctx if team is None else replace(ctx, team_id=team))
    if isinstance(outcome, Denied):
        raise RateLimited(*too_many_requests(outcome.decision, state.settings.upgrade_url))
    if isinstance(outcome, ModelRefused):
        raise ApiError(403, outcome.decision.reason or f"this key may not call the model {ctx.model}",
                       type_="permission_error", code="model_not_allowed", param="model",
                       headers={"X-Request-Id": ctx.request_id})
    if isinstance(outcome, Unavailable):
        raise ApiError(503, outcome.reason, type_="service_unavailable", code="limiter_unavailable",
                       headers={"Retry-After": str(int(outcome.retry_after_s))})
    return {"X-Request-Id": ctx.request_id}, ctx


def cache_plan(request: Request, state: ApiState, caller: Caller, serves: ModelServes, model: str,
               payload: dict[str, Any]) -> CachePlan | None:
    """How the call uses the response cache (state.cache is not None): None when the cache is off for the
    model; 400 naming a cache header that cannot be read. Cache-Control sent on several lines is one list
    (RFC 9110 §5.3)."""
    assert state.cache is not None
    headers = request.headers
    cache_control = ", ".join(headers.getlist("cache-control")) or None
    try:
        return state.cache.plan(serves, model, caller, payload, cache_control, headers.get(TTL_HEADER))
    except BadCacheHeader as exc:
        raise ApiError(400, str(exc), code="invalid_cache_header", param=exc.header) from None


async def admit_cached(state: ApiState, ctx: CallContext, plan: CachePlan
                       ) -> tuple[dict[str, str], CallContext, CachedAnswer | None, AnswerKeeper | None]:
    """The cache is looked up before the limiter is asked: a hit is still a call the limiter counts
    (without reserving anything for it), and recorded here. The headers say what the cache did (and on a
    hit the entry's Age and provider); with the answer found, or what keeps the call's answer."""
    assert state.cache is not None
    found, result = await state.cache.lookup(plan)
    headers, ctx = await admit(state, ctx if found is None else replace(ctx, cache_hit=True))
    CACHE_RESULTS.labels(ctx.model, result).inc()
    headers[CACHE_HEADER] = result
    if found is not None:
        headers["Age"] = str(found.age_s(state.cache.now()))
        headers["X-Costwarden-Provider"] = found.provider
        await state.gateway.replay(ctx, found)
    return headers, ctx, found, state.cache.keeper(plan, result)
