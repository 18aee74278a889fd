"""Composition root of the console: Postgres (read only), the api and health service over HTTP, and
its own NATS identity, wired to the use case and the pages (routes.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import nats
import nats.errors
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import Histogram

from services.console import routes
from services.console.console import Console
from services.console.httpx_key_actions import HttpxKeyActions
from services.console.httpx_live_status import HttpxLiveStatus
from services.console.nats_bus_actions import NatsBusActions
from services.console.pg_console_store import PgConsoleStore
from services.console.sessions import SessionCodec
from services.console.settings import ConsoleSettings
from shared.bus import nats_options
from shared.logs import configure_logging
from shared.probes import ReadinessCheck, probes_router, readiness_document
from shared.service_app import RequestMetrics
from shared.settings import is_set

SERVICE = "console"
# Pages load nothing but this console's own stylesheet, run no script, may not be framed (no
# clickjacking of the revoke button) and post forms only to the console.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
REQUEST_SECONDS = Histogram("costwarden_console_request_seconds", "Console request latency", ["route", "status"])


def session_codec(settings: ConsoleSettings) -> SessionCodec:
    if not is_set(settings.console_session_secret):
        raise SystemExit("CONSOLE_SESSION_SECRET is not set: the console needs a secret (the same on every replica) "
                         "to seal its session cookies, such as the output of `openssl rand -base64 32`")
    return SessionCodec(settings.console_session_secret.get_secret_value(), settings.console_session_hours * 3600)


@dataclass
class OpenedConsole:
    """The use case on its open resources, and the checks of /health/ready."""

    console: Console
    readiness: Sequence[ReadinessCheck]


# Opened at start and closed at shutdown: the real servers by default (console_resources); a test may
# give its own OpenedConsole, to serve the pages in process.
ConsoleResources = Callable[[ConsoleSettings], AbstractAsyncContextManager[OpenedConsole]]


@asynccontextmanager
async def console_resources(settings: ConsoleSettings) -> AsyncIterator[OpenedConsole]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=8)
    nc = await nats.connect(**nats_options(settings, SERVICE))
    client = httpx.AsyncClient()
    console = Console(PgConsoleStore(pool),
                      HttpxLiveStatus(client, settings.console_health_url, settings.console_api_url),
                      HttpxKeyActions(client, settings.console_api_url), NatsBusActions(nc),
                      settings.file_config().thresholds)

    async def postgres() -> None:
        await pool.fetchval("SELECT 1")

    # Ready while its pages can be served: they read Postgres. Without NATS only the dead-letter
    # count and "run a backup now" wait (the pages say so); that is no reason to take it out of service.
    try:
        yield OpenedConsole(console, [("postgres", postgres)])
    finally:
        await client.aclose()
        with contextlib.suppress(nats.errors.Error, RuntimeError):
            await nc.drain()
        await pool.close()


def create_app(settings: ConsoleSettings | None = None, resources: ConsoleResources = console_resources) -> FastAPI:
    settings = settings or ConsoleSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    codec = session_codec(settings)
    tiers = settings.file_config().key_tiers
    readiness: list[ReadinessCheck] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with resources(settings) as opened:
            app.state.console = routes.ConsoleState(opened.console, codec, tiers, settings.console_cookie_secure)
            readiness.extend(opened.readiness)
            yield

    # No /docs: the console is pages for people; its only API is the api's.
    app = FastAPI(title="costwarden console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(routes.router)
    routes.install_handlers(app)
    app.add_middleware(RequestMetrics, histogram=REQUEST_SECONDS)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    app.include_router(probes_router(SERVICE, lambda: readiness_document(SERVICE, readiness)))
    return app
