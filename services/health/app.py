"""The health service (port 3001): polls every dependency in the background and serves the cached
results, in the original JSON or as IETF health+json; publishes transitions and outage alerts."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from redis.asyncio import Redis

from services.health.checks import (
    Probe,
    http_probe,
    nats_probe,
    postgres_probe,
    provider_probe,
    redis_probe,
    run_check,
)
from services.health.status import HealthBoard, dependencies_document, health_json_document, original_document
from shared.events import Alert, HealthChanged
from shared.logs import configure_logging
from shared.migrate import pending_migrations
from shared.settings import Settings, get_settings
from shared.subjects import HEALTH_CHANGED, alert_subject, ensure_streams

SERVICE = "health"
VERSION = "0.1.0"
HEALTH_JSON = "application/health+json"

UP = Gauge("costwarden_dependency_up", "1 when the dependency is healthy or degraded, 0 when not", ["dependency"])
LATENCY = Gauge("costwarden_dependency_latency_seconds", "Latency of the last successful check", ["dependency"])
STATUS = Gauge("costwarden_dependency_status", "Current status (1 for the current one)", ["dependency", "status"])

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    config = settings.file_config()
    board = HealthBoard(failure_threshold=settings.health_failure_threshold)
    started = time.monotonic()
    state: dict[str, Any] = {"migrations_applied": False}

    async def publish_alert(alert: Alert) -> None:
        await state["js"].publish(alert_subject(alert.source, alert.severity), alert.model_dump_json().encode(),
                                  stream="ALERTS", headers={"Nats-Msg-Id": alert.key}, timeout=2)

    async def one_round(probes: dict[str, tuple[Probe, float]]) -> None:
        names = list(probes)
        results = await asyncio.gather(*(run_check(*probes[name]) for name in names))
        for name, result in zip(names, results, strict=True):
            transition, alert = board.record(name, result)
            UP.labels(name).set(1 if result.status in ("healthy", "degraded") else 0)
            if result.latency_ms is not None:
                LATENCY.labels(name).set(result.latency_ms / 1000)
            for status in ("healthy", "degraded", "unhealthy", "skipped"):
                STATUS.labels(name, status).set(1 if status == result.status else 0)
            try:
                if transition:
                    log.info("%s: %s -> %s (%s)", name, transition.previous, transition.current, result.message)
                    event = HealthChanged(dependency=name, previous=transition.previous, current=result.status,
                                          message=result.message, latency_ms=result.latency_ms)
                    await state["nc"].publish(HEALTH_CHANGED, event.model_dump_json().encode())
                if alert:
                    await publish_alert(alert)
            except Exception as exc:  # NATS may be the dependency that is down; the next change is told
                log.warning("could not publish the change of %s: %s", name, type(exc).__name__)
        if not state["migrations_applied"]:
            try:
                state["migrations_applied"] = not await pending_migrations(settings.database_url)
            except Exception as exc:
                log.warning("could not read migrations: %s", type(exc).__name__)
        board.rounds += 1

    async def poll(probes: dict[str, tuple[Probe, float]]) -> None:
        while True:
            began = time.monotonic()
            try:
                await one_round(probes)
            except Exception:
                log.exception("health round failed")
            await asyncio.sleep(max(0.0, settings.health_interval_s - (time.monotonic() - began)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = await nats.connect(settings.nats_url, name="costwarden-health", max_reconnect_attempts=-1,
                                reconnect_time_wait=1, allow_reconnect=True)
        js = nc.jetstream()
        await ensure_streams(js)
        redis = Redis.from_url(settings.redis_url, socket_timeout=settings.health_check_timeout_s,
                               socket_connect_timeout=settings.health_check_timeout_s)
        http = httpx.AsyncClient(timeout=httpx.Timeout(settings.health_check_timeout_s))
        timeout = settings.health_check_timeout_s
        probes: dict[str, tuple[Probe, float]] = {
            "database": (postgres_probe(settings.database_url), timeout),
            "redis": (redis_probe(redis), timeout),
            "nats": (nats_probe(nc), timeout),
            "togetherAI": (provider_probe(http, "Together.ai", settings.together_base_url, settings.together_api_key,
                                          "TOGETHER_API_KEY", "Together.ai API responding normally"), timeout),
            "openAI": (provider_probe(http, "OpenAI", settings.openai_base_url, settings.openai_api_key,
                                      "OPENAI_API_KEY", "OpenAI API available as fallback"), timeout),
        }
        for check in config.health_checks:
            probes[check.name] = (http_probe(http, check.url, check.expect_status), check.timeout_s or timeout)
        state.update(nc=nc, js=js)
        poller = asyncio.create_task(poll(probes))
        try:
            yield
        finally:
            poller.cancel()
            await http.aclose()
            await redis.aclose()
            await nc.close()

    app = FastAPI(title="costwarden health", version=VERSION, lifespan=lifespan)

    def overall_status_code() -> int:
        return 503 if board.overall() == "unhealthy" else 200

    @app.get("/health")
    async def health(request: Request) -> Response:
        if HEALTH_JSON in request.headers.get("accept", ""):
            return JSONResponse(health_json_document(board, VERSION, "costwarden"), status_code=overall_status_code(),
                                media_type=HEALTH_JSON)
        document = original_document(board, datetime.now(UTC), VERSION, int(time.monotonic() - started))
        return JSONResponse(document, status_code=overall_status_code())

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive", "service": SERVICE}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        is_ready = board.rounds > 0 and board.ready()
        body = {"status": "ready" if is_ready else "not ready", "overall": board.overall(),
                "critical": {name: board.status_of(name) for name in ("database", "nats")}}
        return JSONResponse(body, status_code=200 if is_ready else 503)

    @app.get("/health/startup")
    async def startup() -> JSONResponse:
        done = board.rounds > 0 and state["migrations_applied"]
        body = {"status": "started" if done else "starting", "checksDone": board.rounds > 0,
                "migrationsApplied": state["migrations_applied"]}
        return JSONResponse(body, status_code=200 if done else 503)

    @app.get("/health/dependencies")
    async def dependencies() -> JSONResponse:
        details = dependencies_document(board.dependencies)
        for name, entry in details.items():
            dep = board.dependencies[name]
            entry.update(failuresInARow=dep.failures_in_a_row, alertOpen=dep.alert_open)
        return JSONResponse({"status": board.overall(), "dependencies": details}, status_code=overall_status_code())

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
