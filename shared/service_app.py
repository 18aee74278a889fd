"""Turn a FastStream broker into a service process: every bus-only service (limiter, cost, notifier,
backup) serves the probes (shared/probes.py, readiness with the broker's connection first) and the
bus's AsyncAPI document (shared/asyncapi.py) at /docs/asyncapi.json on its own port, its lifecycle
wired to FastStream's hooks. Also what every service process shares: the request-latency middleware,
the collector settled after startup, and serving under uvicorn.

The api, the console and the health service import this module for the latter and never run
FastStream, so FastStream (and the AsyncAPI document's models) are imported only where they are used:
importing them is a good part of a process's start."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, Histogram

from shared.config_file import ConfigError
from shared.probes import (
    CHECK_TIMEOUT_S,
    MULTIPROCESS_DIR_VAR,
    ReadinessCheck,
    json_body,
    live_document,
    metrics_text,
    readiness_document,
)

if TYPE_CHECKING:
    from faststream.asgi import AsgiFastStream
    from faststream.nats import NatsBroker

GRACEFUL_SHUTDOWN_S = 25.0


GC_YOUNG_THRESHOLD = 7_000


def settle_heap() -> None:
    """Once a service has started: what startup made (modules, the app, its clients, the tokenizer's
    tables) leaves the collector's view (gc.freeze), and the youngest generation is collected after
    GC_YOUNG_THRESHOLD new objects instead of CPython's 700. Every call leaves reference cycles that
    only the collector frees (futures, tasks and exceptions inside the libraries on the path), and at
    CPython's defaults collecting them takes a share of a busy gateway's CPU worth saving: collections
    come far less often, each pausing the event loop a little longer (docs/benchmarks-history.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class RequestMetrics:
    """Request latency by route and status into `histogram` (labels route, status): a plain ASGI
    middleware, so no extra task per request."""

    def __init__(self, app: Any, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.histogram.labels(route, str(status)).observe(time.perf_counter() - started)


def make_service_app(broker: NatsBroker, service: str, readiness: Sequence[ReadinessCheck] = (),
                     **app_kwargs: Any) -> AsgiFastStream:
    from faststream.asgi import AsgiFastStream, AsgiResponse, get

    async def nats_connected() -> None:
        if not await broker.ping(CHECK_TIMEOUT_S):
            raise ConnectionError("NATS unreachable")

    checks: list[ReadinessCheck] = [("nats", nats_connected), *readiness]

    async def ready() -> tuple[dict[str, Any], int]:
        return await readiness_document(service, checks)

    def json_answer(document: dict[str, Any], status: int = 200) -> AsgiResponse:
        return AsgiResponse(json_body(document), status, headers={"content-type": "application/json"})

    # The probes (PROBE_PATHS) as FastStream's own HTTP routes, with the bodies probes_router sends.
    @get(include_in_schema=False)
    async def live(scope: Any) -> AsgiResponse:
        return json_answer(live_document(service))

    @get(include_in_schema=False)
    async def readiness_probe(scope: Any) -> AsgiResponse:
        return json_answer(*await ready())

    @get(include_in_schema=False)
    async def metrics(scope: Any) -> AsgiResponse:
        return AsgiResponse(metrics_text(), 200, headers={"content-type": CONTENT_TYPE_LATEST})

    @get(include_in_schema=False)
    async def asyncapi(scope: Any) -> AsgiResponse:
        from shared.asyncapi import asyncapi_document  # imported when first asked for: no start needs it

        return json_answer(asyncapi_document())

    # The bus's whole AsyncAPI document (shared/asyncapi.py), not FastStream's, which lists only the
    # handlers FastStream runs in this service; nor FastStream's page, which loads its viewer from a CDN
    # (blank offline) and brings a "try it out" endpoint that publishes whatever an HTTP caller sends to
    # any subject of the real bus.
    app = AsgiFastStream(
        broker,
        asgi_routes=[("/health/live", live), ("/health/ready", readiness_probe), ("/metrics", metrics),
                     ("/docs/asyncapi.json", asyncapi)],
        **app_kwargs,
    )
    return app


class ServiceLifecycle(Protocol):
    """A bus service's resources: opened, put to work, stopped taking work, closed, in that order."""

    broker: NatsBroker

    async def connect(self) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...


def lifecycle_app(service: ServiceLifecycle, name: str, readiness: Sequence[ReadinessCheck] = ()) -> AsgiFastStream:
    """The service's app with its probes and metrics, its lifecycle wired to FastStream's hooks."""
    app = make_service_app(service.broker, name, readiness=readiness)
    app.on_startup(service.connect)
    app.after_startup(service.start)
    app.after_startup(settle_heap)
    app.on_shutdown(service.stop)
    app.after_shutdown(service.close)
    return app


def serve(factory: str, port: int, host: str = "127.0.0.1", workers: int = 1,
          config: Callable[[], object] | None = None) -> None:
    """Run an ASGI app factory ("module:function") under uvicorn; SIGTERM drains in-flight work.

    `config` reads the service's part of the YAML file first: on a mistake the service does not start,
    and says where the mistake is (exit status 2). uvicorn's own X-Forwarded-For handling is off: the
    gateway decides which proxies it trusts. With several workers, their metrics are kept in files that
    every worker's /metrics adds up (prometheus_client's multiprocess mode), so that any worker answers
    for all of them. No service speaks WebSocket: uvicorn is told so (ws="none"), and imports no
    WebSocket library at each start.
    """
    import uvicorn

    if config is not None:
        try:
            config()
        except ConfigError as exc:
            print(f"invalid configuration, not starting:\n{exc}", file=sys.stderr)
            raise SystemExit(2) from None

    if workers > 1 and not os.environ.get(MULTIPROCESS_DIR_VAR):
        os.environ[MULTIPROCESS_DIR_VAR] = tempfile.mkdtemp(prefix="costwarden-metrics-")
    uvicorn.run(factory, factory=True, host=host, port=port, log_config=None, access_log=False, proxy_headers=False,
                timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S), workers=workers, ws="none")
