"""The probes, in a FastAPI app (the router) and as the HTTP routes of a bus service's FastStream app:
the same answers either way."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from faststream.nats import NatsBroker

from shared.probes import probes_router, readiness_document
from shared.service_app import make_service_app


async def fails() -> None:
    raise ConnectionError("down")


async def answers() -> None:
    return None


async def probe(app: object, path: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:  # type: ignore[arg-type]
        return await client.request(method, path)


async def test_a_fastapi_app_answers_the_probes_and_its_readiness_names_the_check_that_failed():
    checks = [("postgres", answers), ("nats", fails)]
    app = FastAPI()
    app.include_router(probes_router("svc", lambda: readiness_document("svc", checks)))
    assert (await probe(app, "/health/live")).json() == {"status": "alive", "service": "svc"}
    ready = await probe(app, "/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "service": "svc",
                            "checks": {"postgres": "ok", "nats": "fail: ConnectionError"}}
    metrics = await probe(app, "/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


async def test_a_bus_service_answers_the_same_probes_and_is_not_ready_without_its_broker():
    app = make_service_app(NatsBroker(), "bus", readiness=[("postgres", answers)])
    assert (await probe(app, "/health/live")).json() == {"status": "alive", "service": "bus"}
    ready = await probe(app, "/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["postgres"] == "ok"
    assert ready.json()["checks"]["nats"].startswith("fail")
    assert "# TYPE" in (await probe(app, "/metrics")).text
    assert (await probe(app, "/health/nothing")).status_code == 404


async def test_a_bus_service_answers_the_probes_with_the_api_s_bodies_and_refuses_other_methods():
    checks = [("postgres", answers), ("nats", fails)]
    fastapi_app = FastAPI()
    fastapi_app.include_router(probes_router("svc", lambda: readiness_document("svc", checks)))
    bus_app = make_service_app(NatsBroker(), "svc", [("postgres", answers)])
    for path in ("/health/live", "/health/live?x=1"):
        expected, got = await probe(fastapi_app, path), await probe(bus_app, path)
        assert (got.status_code, got.headers["content-type"], got.content) == \
               (expected.status_code, expected.headers["content-type"], expected.content)
    ready = await probe(bus_app, "/health/ready")
    assert ready.status_code == 503 and ready.headers["content-type"] == "application/json"
    assert list(ready.json()["checks"]) == ["nats", "postgres"]
    metrics = await probe(bus_app, "/metrics")
    assert metrics.headers["content-type"] == (await probe(fastapi_app, "/metrics")).headers["content-type"]
    assert (await probe(bus_app, "/health/live", "POST")).status_code == 405
