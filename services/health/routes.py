"""The health service's HTTP answers, read from the board that the monitor keeps current: never a
check on the request's own time, so a slow dependency never makes them slow. Its product is the
aggregate (/health, /health/startup, /health/dependencies); its own probes are shared/probes.py's,
with readiness answered from the board."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.health.monitor import HealthMonitor
from services.health.status import HealthBoard, dependencies_document, health_json_document, original_document

SERVICE = "health"
VERSION = "0.1.0"
HEALTH_JSON = "application/health+json"


@dataclass
class HealthState:
    board: HealthBoard
    started: float
    monitor: HealthMonitor | None = None

    @property
    def status_code(self) -> int:
        return 503 if self.board.overall() == "unhealthy" else 200

    @property
    def migrations_applied(self) -> bool:
        return self.monitor is not None and self.monitor.migrations_applied


async def health_state(request: Request) -> HealthState:
    state: HealthState = request.app.state.health
    return state


router = APIRouter()


@router.get("/health")
async def health(request: Request, state: HealthState = Depends(health_state)) -> Response:
    if HEALTH_JSON in request.headers.get("accept", ""):
        return JSONResponse(health_json_document(state.board, VERSION, "costwarden"), status_code=state.status_code,
                            media_type=HEALTH_JSON)
    document = original_document(state.board, datetime.now(UTC), VERSION, int(time.monotonic() - state.started))
    return JSONResponse(document, status_code=state.status_code)


async def readiness(state: HealthState) -> tuple[dict[str, Any], int]:
    """Ready once a round of checks has run and the critical dependencies answer."""
    board = state.board
    is_ready = board.rounds > 0 and board.ready()
    body = {"status": "ready" if is_ready else "not ready", "overall": board.overall(),
            "critical": {name: board.status_of(name) for name in ("database", "nats")}}
    return body, 200 if is_ready else 503


@router.get("/health/startup")
async def startup(state: HealthState = Depends(health_state)) -> JSONResponse:
    done = state.board.rounds > 0 and state.migrations_applied
    body = {"status": "started" if done else "starting", "checksDone": state.board.rounds > 0,
            "migrationsApplied": state.migrations_applied}
    return JSONResponse(body, status_code=200 if done else 503)


@router.get("/health/dependencies")
async def dependencies(state: HealthState = Depends(health_state)) -> JSONResponse:
    board = state.board
    details = dependencies_document(board.dependencies)
    for name, entry in details.items():
        dep = board.dependencies[name]
        entry.update(failuresInARow=dep.failures_in_a_row, alertOpen=dep.alert_open)
    return JSONResponse({"status": board.overall(), "dependencies": details}, status_code=state.status_code)

