"""Composition root and HTTP edge of the api gateway (FastAPI).

OpenAI-compatible /v1/chat/completions and /v1/models, the original /api/agent/* endpoints, and the
service's own /health/live, /health/ready and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import nats
import nats.errors
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Histogram
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.breaker import CircuitBreaker
from services.api.callers import (
    ANONYMOUS,
    Caller,
    InvalidCredentials,
    PgApiKeyStore,
    bearer_token,
    client_ip,
    parse_networks,
)
from services.api.gateway import CallContext, CompletionPublisher, Gateway, LimiterClient, UnknownModel
from services.api.providers import ProviderClient, ProviderRouter, ProvidersFailed
from services.api.ratelimit_headers import ratelimit_headers, too_many_requests
from services.api.requests import AgentQuery, AgentRequest, ChatCompletionRequest, LongFormRequest
from services.api.tiktoken_token_counter import TiktokenTokenCounter
from shared.events import LimitDecision, Policy
from shared.logs import configure_logging
from shared.service_app import metrics_text, run_readiness
from shared.settings import Settings, get_settings, is_set
from shared.subjects import COST_QUERY, ensure_streams

SERVICE = "api"
LONG_FORM_MAX_TOKENS = 4096
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

REQUEST_SECONDS = Histogram("costwarden_api_request_seconds", "Gateway request latency", ["route", "status"])

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answered as OpenAI's error object: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class RateLimited(Exception):
    def __init__(self, decision: LimitDecision, upgrade_url: str) -> None:
        self.body, self.headers = too_many_requests(decision, upgrade_url)


class RelayResponse(StreamingResponse):
    """A relayed stream that is closed as soon as the response ends, however it ends. Starlette cancels
    a streaming response whose client disconnects; the relay may then be parked at a `yield` and would
    otherwise only be closed whenever the garbage collector finds it (and only then record the call)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class RequestMetrics:
    """Request latency by route and status (a plain ASGI middleware: no extra task per request)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUEST_SECONDS.labels(route, str(status)).observe(time.perf_counter() - started)


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
    if len(tags) > 16:
        raise ApiError(400, "at most 16 tags", code="invalid_tags", param="X-Costwarden-Tags")
    return tags


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    return ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param,
                    code="invalid_value")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    config = settings.file_config()
    trusted = parse_networks(settings.trusted_proxies)
    state: dict[str, Any] = {}

    def provider_clients() -> dict[str, ProviderClient]:
        clients = {}
        for name, base_url, key in (("together_ai", settings.together_base_url, settings.together_api_key),
                                    ("openai", settings.openai_base_url, settings.openai_api_key)):
            if is_set(key):
                clients[name] = ProviderClient(name, base_url, key, settings.provider_timeout_s,
                                               settings.provider_connect_timeout_s)
        return clients

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = await nats.connect(settings.nats_url, name="costwarden-api", max_reconnect_attempts=-1,
                                reconnect_time_wait=1)
        js = nc.jetstream()
        await ensure_streams(js)
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=8)
        clients = provider_clients()
        breakers = {name: CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_cooldown_s)
                    for name in clients}
        counter = await asyncio.to_thread(TiktokenTokenCounter.cl100k)
        state.update(
            nc=nc, pool=pool, keys=PgApiKeyStore(pool, settings.api_key_cache_s), breakers=breakers,
            gateway=Gateway(
                LimiterClient(nc, settings.limiter_request_timeout_s, settings.limiter_failure_mode),
                ProviderRouter(clients, breakers, settings.provider_max_retries),
                CompletionPublisher(nc, js),
                config.models,
                counter,
            ),
        )
        try:
            yield
        finally:
            await state["gateway"].drain()
            try:
                await nc.drain()
            except nats.errors.Error:  # NATS is away; nats-py may then fail to flush to the dead socket
                with contextlib.suppress(RuntimeError):
                    await nc.close()
            await pool.close()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN and are blank offline.
    # The OpenAPI document itself stays at /openapi.json.
    app = FastAPI(title="costwarden api", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors (unknown path, wrong method) in the same error format as every other answer."""
        if exc.status_code == 404:
            error = ApiError(404, f"no route {request.method} {request.url.path}; see /openapi.json",
                             code="not_found")
        elif exc.status_code == 405:
            error = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed",
                             headers=exc.headers)
        else:
            error = ApiError(exc.status_code, str(exc.detail), code="http_error", headers=exc.headers)
        return error.response()

    @app.exception_handler(RateLimited)
    async def on_rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(exc.body, status_code=429, headers=exc.headers)

    app.add_middleware(RequestMetrics)

    async def caller_of(request: Request) -> Caller:
        try:
            token = bearer_token(request.headers.get("authorization"))
            if token is None:
                return ANONYMOUS
            return await state["keys"].caller_for(token)
        except InvalidCredentials as exc:
            raise ApiError(401, str(exc), code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"}) from None

    async def read_body(request: Request, model: type[M]) -> M:
        declared = request.headers.get("content-length")
        too_large = ApiError(413, f"request body is larger than {settings.max_body_bytes} bytes",
                             code="body_too_large")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
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

    def checked_max_tokens(value: int | None, param: str = "max_tokens") -> int | None:
        cap = settings.reservation_cap_tokens
        if value is not None and not 1 <= value <= cap:
            raise ApiError(400, f"{param} must be between 1 and {cap}", param=param, code="invalid_value")
        return value

    async def context(request: Request, caller: Caller, endpoint: str, policy: Policy, session_id: str | None,
                      payload: dict[str, Any], max_tokens: int | None) -> CallContext:
        tags = parse_tags(request.headers.get("x-costwarden-tags"))
        return CallContext(
            request_id=uuid.uuid4().hex, caller=caller,
            client_ip=client_ip(request.client.host if request.client else None,
                                request.headers.get("x-forwarded-for"), trusted),
            endpoint=endpoint, prompt_tokens=await state["gateway"].count_prompt(payload), max_tokens=max_tokens,
            policy=policy, session_id=session_id or request.headers.get("x-session-id"), tags=tags,
        )

    async def admitted(ctx: CallContext, model: str) -> dict[str, str]:
        gateway: Gateway = state["gateway"]
        try:
            gateway.routes_for(model)
        except UnknownModel:
            raise ApiError(404, f"The model '{model}' does not exist or is not served by this gateway",
                           param="model", code="model_not_found") from None
        decision = await gateway.admit(ctx, model)
        if decision.allowed:
            return {"X-Request-Id": ctx.request_id, **ratelimit_headers(decision)}
        if decision.limited_by == "unavailable":
            raise ApiError(503, decision.reason or "rate limiter unavailable", type_="service_unavailable",
                           code="limiter_unavailable", headers={"Retry-After": str(int(decision.retry_after_s))})
        raise RateLimited(decision, settings.upgrade_url)

    def provider_failure(exc: ProvidersFailed, ctx: CallContext) -> ApiError:
        """The call is recorded under its request id, which the error carries too."""
        headers = {"X-Request-Id": ctx.request_id}
        if exc.timed_out:
            return ApiError(504, f"LLM provider timed out: {exc}", type_="upstream_timeout", code="provider_timeout",
                            headers=headers)
        return ApiError(502, f"LLM provider failed: {exc}", type_="upstream_error", code="provider_error",
                        headers=headers)

    async def complete(ctx: CallContext, model: str, payload: dict[str, Any]):
        try:
            return await state["gateway"].complete(ctx, model, payload)
        except ProvidersFailed as exc:
            raise provider_failure(exc, ctx) from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        caller = await caller_of(request)
        chat = await read_body(request, ChatCompletionRequest)
        param = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
        max_tokens = checked_max_tokens(chat.completion_limit, param)
        payload = chat.model_dump(exclude_none=True)
        ctx = await context(request, caller, "/v1/chat/completions", "standard", None, payload, max_tokens)
        headers = await admitted(ctx, chat.model)
        gateway: Gateway = state["gateway"]
        if not chat.stream:
            call = await complete(ctx, chat.model, payload)
            return Response(call.raw, media_type="application/json",
                            headers={**headers, "X-Costwarden-Provider": call.provider})
        try:
            call, started = await gateway.open_stream(ctx, chat.model, payload)
        except ProvidersFailed as exc:
            raise provider_failure(exc, ctx) from None
        forward_usage = bool((chat.stream_options or {}).get("include_usage"))
        return RelayResponse(
            gateway.relay(ctx, chat.model, call, started, forward_usage), media_type="text/event-stream",
            headers={**headers, "X-Costwarden-Provider": call.provider, "Cache-Control": "no-cache"},
        )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        created = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": routes[0].provider}
            for name, routes in config.models.items()
        ]}

    async def agent_call(request: Request, body: AgentRequest, text: str, endpoint: str,
                         policy: Policy, default_max_tokens: int) -> JSONResponse:
        caller = await caller_of(request)
        model = body.model or config.default_model
        max_tokens = checked_max_tokens(body.max_tokens) or default_max_tokens
        payload = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
        ctx = await context(request, caller, endpoint, policy, body.session_id, payload, max_tokens)
        headers = await admitted(ctx, model)
        call = await complete(ctx, model, payload)
        choice = (call.body.get("choices") or [{}])[0]
        return JSONResponse({
            "requestId": ctx.request_id,
            "response": (choice.get("message") or {}).get("content"),
            "model": model,
            "provider": call.provider,
            "usage": call.body.get("usage"),
        }, headers=headers)

    @app.post("/api/agent/query")
    async def agent_query(request: Request) -> JSONResponse:
        body = await read_body(request, AgentQuery)
        return await agent_call(request, body, body.query, "/api/agent/query", "standard",
                                settings.default_max_tokens)

    @app.post("/api/agent/generate-long-form")
    async def agent_long_form(request: Request) -> JSONResponse:
        body = await read_body(request, LongFormRequest)
        return await agent_call(request, body, body.prompt, "/api/agent/generate-long-form", "strict",
                                min(LONG_FORM_MAX_TOKENS, settings.reservation_cap_tokens))

    async def cost_query(request: Request, query: dict[str, Any]) -> JSONResponse:
        """Ask the cost service (`cost.query`). A normal key sees its own usage only; an admin key sees
        everyone's, or one user's with ?user_id=."""
        caller = await caller_of(request)
        if caller.anonymous:
            raise ApiError(401, "cost queries need an API key", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        requested_user = request.query_params.get("user_id")
        if caller.is_admin:
            query["user_id"] = requested_user
        elif requested_user not in (None, caller.user_id):
            raise ApiError(403, "a non-admin key can only read its own usage", type_="permission_error",
                           code="forbidden", param="user_id")
        else:
            query["user_id"] = caller.user_id
        try:
            reply = await state["nc"].request(COST_QUERY, json.dumps(query).encode(),
                                              timeout=settings.cost_query_timeout_s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise ApiError(503, "the cost service did not answer", type_="service_unavailable",
                           code="cost_unavailable") from None
        body = json.loads(reply.data)
        if "error" in body:
            raise ApiError(400, body.get("reason") or body["error"], code="invalid_value")
        return JSONResponse(body)

    @app.get("/api/costs/current")
    async def current_costs(request: Request) -> JSONResponse:
        return await cost_query(request, {"kind": "current"})

    @app.get("/api/costs/analytics")
    async def cost_analytics(request: Request) -> JSONResponse:
        params = request.query_params
        if "start" not in params or "end" not in params:
            raise ApiError(400, "start and end (ISO 8601 with a timezone) are required", code="invalid_value",
                           param="start" if "start" not in params else "end")
        top_n = params.get("top_n", "10")
        if not top_n.isdigit():
            raise ApiError(400, "top_n must be a whole number", code="invalid_value", param="top_n")
        return await cost_query(request, {"kind": "analytics", "start": params["start"], "end": params["end"],
                                          "top_n": int(top_n)})

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive", "service": SERVICE}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        async def nats_connected() -> None:
            if not state["nc"].is_connected:
                raise ConnectionError("NATS disconnected")

        async def postgres() -> None:
            await state["pool"].fetchval("SELECT 1")

        checks = await run_readiness([("nats", nats_connected), ("postgres", postgres)])
        is_ready = all(result == "ok" for result in checks.values())
        breakers = {name: breaker.state.value for name, breaker in state["breakers"].items()}
        return JSONResponse({"status": "ready" if is_ready else "not ready", "service": SERVICE, "checks": checks,
                             "providers": breakers}, status_code=200 if is_ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return app
