"""The gateway's HTTP edge: how a request becomes a call (body, caller, tags, limits) and how every
failure becomes an answer in OpenAI's error format ({"error": {message, type, param, code}})."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.callers import (
    ANONYMOUS,
    ApiKeyStore,
    Caller,
    InvalidCredentials,
    KeyStoreUnavailable,
    bearer_token,
)
from services.api.gateway import CallContext, Gateway, UnknownModel
from services.api.providers import ProvidersFailed
from services.api.ratelimit_headers import too_many_requests
from shared.events import LimitDecision
from shared.policy import ModelConfig

TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TAGS = 16

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class RateLimited(Exception):
    """A denial, answered with the original system's 429 body and the rate-limit headers."""

    def __init__(self, decision: LimitDecision, upgrade_url: str) -> None:
        self.body, self.headers = too_many_requests(decision, upgrade_url)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RateLimited)
    async def on_rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(exc.body, status_code=429, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors (unknown path, wrong method) in the same format as every other answer."""
        return routing_error(request, exc).response()


def routing_error(request: Request, exc: StarletteHTTPException) -> ApiError:
    if exc.status_code == 404:
        return ApiError(404, f"no route {request.method} {request.url.path}; see /openapi.json", code="not_found")
    if exc.status_code == 405:
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed",
                        headers=exc.headers)
    return ApiError(exc.status_code, str(exc.detail), code="http_error", headers=exc.headers)


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


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    return ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_value")


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


def public_model(gateway: Gateway, name: str) -> ModelConfig:
    try:
        return gateway.model(name)
    except UnknownModel:
        raise ApiError(404, f"The model '{name}' does not exist or is not served by this gateway",
                       param="model", code="model_not_found") from None


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


async def caller_of(request: Request, keys: ApiKeyStore) -> Caller:
    try:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return ANONYMOUS
        return await keys.caller_for(token)
    except InvalidCredentials as exc:
        raise ApiError(401, str(exc), code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}) from None
    except KeyStoreUnavailable:
        raise ApiError(503, "API keys cannot be checked right now; retry shortly", code="key_store_unavailable",
                       headers={"Retry-After": "5"}) from None


def provider_failure(exc: ProvidersFailed, ctx: CallContext) -> ApiError:
    """502 (or 504 when every provider timed out), naming each provider; the call is recorded under its
    request id, which the error carries too."""
    headers = {"X-Request-Id": ctx.request_id}
    if exc.timed_out:
        return ApiError(504, f"LLM provider timed out: {exc}", type_="upstream_timeout", code="provider_timeout",
                        headers=headers)
    return ApiError(502, f"LLM provider failed: {exc}", type_="upstream_error", code="provider_error",
                    headers=headers)
