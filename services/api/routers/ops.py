"""The service's own probes and metrics: /health/live, /health/ready (with each provider's breaker)
and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.api.api_state import api_state
from shared.service_app import metrics_text, readiness_document

SERVICE = "api"
router = APIRouter()


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive", "service": SERVICE}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    state = api_state(request)
    body, status = await readiness_document(SERVICE, state.readiness)
    body["providers"] = {name: breaker.state.value for name, breaker in state.breakers.items()}
    return JSONResponse(body, status_code=status)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)
