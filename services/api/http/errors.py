"""How every failure becomes an answer: in OpenAI's error format ({"error": {message, type, param,
code}}), except the limiter's 429, which keeps the original system's body (http/edge.py `admit` raises
it). A call no provider answered becomes its 502 (504 when every provider timed out, 429 with
Retry-After when every route was cooling down) here, once, whichever route made it; so do routing
errors (404, 405)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.calls import CallFailed
from services.api.providers import wait_header


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
    """A denial: the original system's 429 body and the rate-limit headers (ratelimit_headers.py)."""

    def __init__(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.body, self.headers = body, headers


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RateLimited)
    async def on_rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(exc.body, status_code=429, headers=exc.headers)

    @app.exception_handler(CallFailed)
    async def on_call_failed(request: Request, exc: CallFailed) -> JSONResponse:
        return provider_failure(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors (unknown path, wrong method) in the same format as every other answer."""
        return routing_error(request, exc).response()


def provider_failure(exc: CallFailed) -> ApiError:
    """502 (or 504 when every provider timed out), naming each provider; 429 when no route could be
    tried (every one cooling down: its circuit open, over its rpm/tpm ceiling), with Retry-After the
    shortest time until one is back. The call is recorded under its request id, which the error
    carries too."""
    headers = {"X-Request-Id": exc.request_id}
    if exc.retry_after_s is not None:
        return ApiError(429, f"every route of this model is cooling down: {exc}", type_="rate_limit_error",
                        code="routes_cooling_down", headers={**headers, "Retry-After": wait_header(exc.retry_after_s)})
    if exc.timed_out:
        return ApiError(504, f"LLM provider timed out: {exc}", type_="upstream_timeout", code="provider_timeout",
                        headers=headers)
    return ApiError(502, f"LLM provider failed: {exc}", type_="upstream_error", code="provider_error",
                    headers=headers)


def routing_error(request: Request, exc: StarletteHTTPException) -> ApiError:
    if exc.status_code == 404:
        return ApiError(404, f"no route {request.method} {request.url.path}; see /openapi.json", code="not_found")
    if exc.status_code == 405:
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed",
                        headers=exc.headers)
    return ApiError(exc.status_code, str(exc.detail), code="http_error", headers=exc.headers)


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    return ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_value")
