"""The service's own probes and metrics: /health/live, /health/ready (with each provider's breaker),
/metrics, and the bus's AsyncAPI document at /asyncapi.json (for upstream services)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.api.api_state import api_state
from shared.asyncapi import asyncapi_document
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


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi() -> JSONResponse:
    return JSONResponse(asyncapi_document())
