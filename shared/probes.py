"""Every service's probes and metrics, answered one way:

  /health/live   the process answers (never depends on another system)
  /health/ready  each readiness check of the service passes (200), else 503 naming the one that failed
  /metrics       Prometheus text format, of every worker when they share a multiprocess directory

The answers are made here once and served two ways, with the same bodies: a FastAPI router included
in the app of the api, the console and the health service (probes_router), and FastStream's own HTTP
routes in a bus service's app (shared/service_app.py), so that the bus services never import FastAPI
(a good part of their start). A service may answer readiness its own way
through `ready` (the api adds its breakers, the health service answers from its board).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

if TYPE_CHECKING:
    from fastapi import APIRouter

ReadinessCheck = tuple[str, Callable[[], Awaitable[Any]]]
ReadyAnswer = Callable[[], Awaitable[tuple[dict[str, Any], int]]]
CHECK_TIMEOUT_S = 2.0
MULTIPROCESS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"
PROBE_PATHS = ("/health/live", "/health/ready", "/metrics")


async def run_readiness(checks: Sequence[ReadinessCheck]) -> dict[str, str]:
    async def one(check: Callable[[], Awaitable[Any]]) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except Exception as exc:  # a readiness probe reports every failure, whatever its type
            return f"fail: {type(exc).__name__}"
        return "ok"

    results = await asyncio.gather(*(one(check) for _, check in checks))
    return {name: result for (name, _), result in zip(checks, results, strict=True)}


async def readiness_document(service: str, checks: Sequence[ReadinessCheck]) -> tuple[dict[str, Any], int]:
    """/health/ready's body and status: ready (200) when every check passes, else 503."""
    results = await run_readiness(checks)
    is_ready = all(result == "ok" for result in results.values())
    return ({"status": "ready" if is_ready else "not ready", "service": service, "checks": results},
            200 if is_ready else 503)


def live_document(service: str) -> dict[str, str]:
    """/health/live's body."""
    return {"status": "alive", "service": service}


def metrics_text() -> bytes:
    """Prometheus text of this process, or of every worker when they share a multiprocess directory."""
    if not os.environ.get(MULTIPROCESS_DIR_VAR):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def probes_router(service: str, ready: ReadyAnswer) -> APIRouter:
    """The three probes (PROBE_PATHS) as a FastAPI router."""
    # Imported here: the bus services import this module for the answers and never run FastAPI. (Hence
    # response_model=None: FastAPI could not resolve these return annotations, and a Response is sent
    # as it is anyway.)
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse, Response

    router = APIRouter()

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return live_document(service)

    @router.get("/health/ready", response_model=None)
    async def readiness() -> JSONResponse:
        body, status = await ready()
        return JSONResponse(body, status_code=status)

    @router.get("/metrics", include_in_schema=False, response_model=None)
    async def metrics() -> Response:
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return router


def json_body(document: dict[str, Any]) -> bytes:
    """JSON as FastAPI's JSONResponse writes it, so that a bus service's probes answer byte for byte as the
    api's."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
