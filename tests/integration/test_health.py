"""The health service on real servers: outages of a private Redis and Postgres, failing and slow
providers, transitions and alerts on the bus, and both response formats."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jsonschema
import nats
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.deploy.migrate import apply_migrations
from services.simulator.app import create_app as create_simulator
from tests.conftest import set_faults, start_service
from tests.integration.helpers import stream_messages
from tests.servers import PostgresServer, ThreadedHttpServer, nats_server, postgres_binaries, redis_server, stop_all
from tests.support.polling import eventually

pytestmark = [pytest.mark.service,
              pytest.mark.skipif(postgres_binaries() is None, reason="needs PostgreSQL server binaries")]

# The response shape of draft-inadarei-api-health-check.
HEALTH_JSON_SCHEMA = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["pass", "fail", "warn"]},
        "version": {"type": "string"}, "releaseId": {"type": "string"}, "serviceId": {"type": "string"},
        "description": {"type": "string"}, "notes": {"type": "array"}, "output": {"type": "string"},
        "checks": {
            "type": "object",
            "propertyNames": {"pattern": "^[^:]+(:[^:]+)?$"},
            "additionalProperties": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "componentId": {"type": "string"}, "componentType": {"type": "string"},
                    "observedValue": {}, "observedUnit": {"type": "string"},
                    "status": {"enum": ["pass", "fail", "warn"]},
                    "time": {"type": "string", "format": "date-time"}, "output": {"type": "string"},
                },
                "additionalProperties": False,
            }},
        },
    },
}


@pytest.fixture(scope="module")
async def servers(base_env, tmp_path_factory):
    """A private Postgres, Redis and NATS, the two providers, a slow extra dependency and the health
    service watching them, for the module."""
    pg = PostgresServer()
    pg.start()
    database_url = pg.url.rsplit("/", 1)[0] + "/costwarden"
    await apply_migrations(database_url)
    redis_srv, redis_url = redis_server()
    nats_srv, nats_url = nats_server()
    together = ThreadedHttpServer(create_simulator("together_ai")).start()
    openai_sim = ThreadedHttpServer(create_simulator("openai")).start()

    async def slow(request):
        await asyncio.sleep(5)
        return PlainTextResponse("late")

    supabase = ThreadedHttpServer(Starlette(routes=[Route("/rest/v1/", slow)])).start()
    config = tmp_path_factory.mktemp("health") / "costwarden.yaml"
    config.write_text(f"health_checks:\n  - {{name: supabase, url: '{supabase.url}/rest/v1/', timeout_s: 1}}\n")
    env = {**base_env, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "NATS_URL": nats_url,
           "TOGETHER_BASE_URL": f"{together.url}/v1", "OPENAI_BASE_URL": f"{openai_sim.url}/v1",
           "HEALTH_INTERVAL_S": "0.5", "HEALTH_CHECK_TIMEOUT_S": "1", "HEALTH_FAILURE_THRESHOLD": "2",
           "COSTWARDEN_CONFIG": str(config)}
    nc = await nats.connect(nats_url)
    changes: list[dict] = []

    async def on_change(msg):
        changes.append(json.loads(msg.data))

    await nc.subscribe("health.changed", cb=on_change)
    health = start_service("health", env, "HEALTH_PORT")
    client = httpx.AsyncClient(base_url=health.url, timeout=10)
    yield {"pg": pg, "redis": redis_srv, "together": together, "openai": openai_sim, "client": client,
           "nc": nc, "changes": changes, "env": env, "health": health}
    await client.aclose()
    await nc.close()
    stop_all([health, together, openai_sim, supabase, redis_srv, nats_srv, pg])


UP = ("healthy", "degraded")
AS_STARTED = {"database": UP, "redis": UP, "nats": UP, "togetherAI": UP, "openAI": UP,
              "supabase": ("unhealthy",)}  # the slow extra dependency times out


@pytest.fixture
async def world(servers):
    """The module's servers as every test starts with them, as the health service sees them: each server up,
    no provider fault (a test before may have stopped a server or set a fault)."""
    for server in (servers["redis"], servers["pg"]):
        if server.process is None or server.process.poll() is not None:
            server.start()
    for provider in (servers["together"], servers["openai"]):
        set_faults(provider)  # none

    async def as_started() -> bool:
        dependencies = (await servers["client"].get("/health/dependencies")).json()["dependencies"]
        return set(dependencies) == set(AS_STARTED) and all(
            dependencies[name]["status"] in statuses for name, statuses in AS_STARTED.items())

    assert await eventually(as_started), "the health service does not see the servers as they started"
    return servers


async def dependency(client, name):
    body = (await client.get("/health/dependencies")).json()
    return body["dependencies"].get(name)


async def test_outages_and_recoveries_change_status_codes_events_and_alerts(world):
    client, changes = world["client"], world["changes"]
    assert await eventually(lambda: _status(client, "/health/startup", 200))
    body = (await client.get("/health")).json()
    assert set(body) == {"status", "timestamp", "version", "uptime", "dependencies"}
    assert body["dependencies"]["database"]["status"] == "healthy"
    assert body["dependencies"]["database"]["message"] == "Database responding normally"
    assert body["dependencies"]["togetherAI"]["message"] == "Together.ai API responding normally"
    assert set(body["dependencies"]["database"]) == {"status", "latency", "message", "lastChecked"}
    assert body["dependencies"]["supabase"]["status"] == "unhealthy"  # the slow extra dependency
    assert body["status"] == "degraded" and (await client.get("/health")).status_code == 200

    world["redis"].stop()
    assert await eventually(lambda: _status(client, "/health", 503))
    assert (await dependency(client, "redis"))["status"] == "unhealthy"
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200  # Redis is not a readiness dependency
    world["redis"].start()
    assert await eventually(lambda: _status(client, "/health", 200))

    world["pg"].stop()
    assert await eventually(lambda: _status(client, "/health/ready", 503))
    assert (await client.get("/health")).status_code == 503
    assert (await client.get("/health/live")).status_code == 200
    world["pg"].start()
    assert await eventually(lambda: _status(client, "/health/ready", 200), timeout_s=30)

    redis_changes = [(c["previous"], c["current"]) for c in changes if c["dependency"] == "redis"]
    assert ("healthy", "unhealthy") in redis_changes and ("unhealthy", "healthy") in redis_changes
    alerts = await stream_messages(world["nc"].jetstream(), "ALERTS", "alert.>")
    keys = [(a["key"], a["severity"]) for a in alerts]
    assert ("health:redis:down", "critical") in keys and ("health:redis:down:resolved", "resolved") in keys
    assert ("health:database:down", "critical") in keys and ("health:database:down:resolved", "resolved") in keys
    resolved = next(a for a in alerts if a["key"] == "health:database:down:resolved")
    assert resolved["resolves"] == "health:database:down"
    metrics = (await client.get("/metrics")).text
    assert 'costwarden_dependency_up{dependency="redis"} 1.0' in metrics
    assert 'costwarden_dependency_latency_seconds{dependency="database"}' in metrics


async def _status(client, path, code):
    try:
        return (await client.get(path)).status_code == code
    except httpx.HTTPError:
        return False


async def _dep_status(client, name, status):
    dep = await dependency(client, name)
    return dep is not None and dep["status"] == status


async def test_health_json_follows_the_draft(world):
    client = world["client"]
    assert await eventually(lambda: _status(client, "/health/startup", 200))
    response = await client.get("/health", headers={"Accept": "application/health+json"})
    assert response.headers["content-type"].startswith("application/health+json")
    document = response.json()
    jsonschema.validate(document, HEALTH_JSON_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert document["status"] == "warn"
    assert document["checks"]["database:responseTime"][0]["status"] == "pass"
    assert document["checks"]["database:responseTime"][0]["observedUnit"] == "ms"
    assert document["checks"]["supabase:responseTime"][0]["status"] == "fail"


async def test_a_slow_dependency_never_slows_the_endpoints(world):
    client = world["client"]
    assert await eventually(lambda: _status(client, "/health/startup", 200))
    for path in ("/health", "/health/dependencies", "/health/ready", "/health/live"):
        started = time.monotonic()
        await client.get(path)
        assert time.monotonic() - started < 1.0, path  # the supabase check takes 5 s; the timeout is 1 s
    assert (await dependency(client, "supabase"))["message"] == "timed out after 1s"


# After the other tests on the module's servers: the faults it sets last until the `world` of a test after
# it clears them.
async def test_failing_and_slow_providers_while_liveness_stays_up(world):
    client = world["client"]
    set_faults(world["openai"], status=500, count=100000)
    assert await eventually(lambda: _dep_status(client, "openAI", "unhealthy"))
    assert (await dependency(client, "openAI"))["message"] == "HTTP 500"
    body = (await client.get("/health")).json()
    assert body["status"] in ("degraded",)  # Together.ai still serves: degraded, not failing
    assert (await client.get("/health/ready")).status_code == 200

    set_faults(world["together"], delay_s=3)
    assert await eventually(lambda: _dep_status(client, "togetherAI", "unhealthy"))
    assert (await dependency(client, "togetherAI"))["message"] == "timed out after 1s"
    assert (await client.get("/health")).status_code == 503  # no provider left
    assert (await client.get("/health/live")).status_code == 200


async def test_a_provider_without_a_key_is_skipped_not_failed(base_env):
    env = {**base_env, "OPENAI_API_KEY": "", "HEALTH_INTERVAL_S": "0.5"}
    health = start_service("health", env, "HEALTH_PORT")
    try:
        async with httpx.AsyncClient(base_url=health.url) as client:
            assert await eventually(lambda: _dep_status(client, "openAI", "skipped"))
            dep = await dependency(client, "openAI")
            body = (await client.get("/health")).json()
    finally:
        health.stop()
    assert dep["message"] == "not checked: no OPENAI_API_KEY configured"
    assert body["status"] == "healthy"


async def test_declared_providers_of_each_kind_are_watched_and_one_going_down_is_announced(base_env, nats_url,
                                                                                         tmp_path):
    claude = ThreadedHttpServer(create_simulator("claude", "anthropic")).start()
    azure = ThreadedHttpServer(create_simulator("azure", "azure")).start()
    config = tmp_path / "costwarden.yaml"
    config.write_text("providers:\n"
                      f"  claude-sim: {{kind: anthropic, base_url: '{claude.url}', api_key_env: CLAUDE_SIM_KEY}}\n"
                      f"  azure-sim: {{kind: azure, base_url: '{azure.url}', api_key_env: AZURE_SIM_KEY}}\n")
    env = {**base_env, "COSTWARDEN_CONFIG": str(config), "CLAUDE_SIM_KEY": "sk-ant-watched",
           "AZURE_SIM_KEY": "azure-watched", "HEALTH_INTERVAL_S": "0.5", "HEALTH_CHECK_TIMEOUT_S": "1"}
    nc = await nats.connect(nats_url)
    changes: list[dict] = []

    async def on_change(msg):
        change = json.loads(msg.data)
        if change["dependency"] in ("claude-sim", "azure-sim"):
            changes.append(change)

    await nc.subscribe("health.changed", cb=on_change)
    health = start_service("health", env, "HEALTH_PORT")
    try:
        async with httpx.AsyncClient(base_url=health.url, timeout=10) as client:
            assert await eventually(lambda: _dep_status(client, "claude-sim", "healthy"))
            assert await eventually(lambda: _dep_status(client, "azure-sim", "healthy"))
            assert (await dependency(client, "claude-sim"))["message"] == "Anthropic API responding normally"
            assert (await dependency(client, "azure-sim"))["message"] == "Azure OpenAI API responding normally"
            azure.stop()
            assert await eventually(lambda: _dep_status(client, "azure-sim", "unhealthy"))
            assert await eventually(lambda: _announced(changes, "azure-sim", "healthy", "unhealthy"))
            document = (await client.get("/health/dependencies")).text
            assert (await dependency(client, "claude-sim"))["status"] == "healthy"
            assert json.loads(document)["status"] == "degraded"
            metrics = (await client.get("/metrics")).text
            health_json = (await client.get("/health", headers={"Accept": "application/health+json"})).json()
    finally:
        health.stop()
        await nc.close()
        claude.stop()
        azure.stop()
    assert 'costwarden_dependency_up{dependency="azure-sim"} 0.0' in metrics
    assert 'costwarden_dependency_up{dependency="claude-sim"} 1.0' in metrics
    assert health_json["checks"]["azure-sim:responseTime"][0]["status"] == "fail"
    assert ("healthy", "unhealthy") not in [(c["previous"], c["current"]) for c in changes
                                            if c["dependency"] == "claude-sim"]
    for secret in ("sk-ant-watched", "azure-watched"):
        assert secret not in document + metrics + json.dumps(health_json) + health.logs()


def _announced(changes: list[dict], name: str, previous: str, current: str) -> bool:
    return any((c["dependency"], c["previous"], c["current"]) == (name, previous, current) for c in changes)
