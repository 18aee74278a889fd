"""Test harness: real servers only.

Tiers (docs/testing.md): a test is `unit` unless marked `adapter` (one real server), `service` (a
service as a process) or `system` (clusters, the soak, the browser, `costwarden run`); every test under
tests/integration has one of these three, and a unit test may not ask for a server. Modules run
longest first, by the durations of the last run, so that `-n` workers finish together.

NATS: a private `nats-server -js` per test session. Redis: a private `redis-server` where the binary
exists, else REDIS_URL. Postgres: a fresh database per session on DATABASE_URL's server. With
COSTWARDEN_TESTCONTAINERS=1 and a reachable Docker engine, NATS, Redis and Postgres come from pinned
testcontainers images instead. LLM providers: the project's OpenAI-compatible simulator on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import nats
import pytest

from services.deploy.migrate import apply_migrations
from services.simulator.app import create_app as create_simulator
from tests.servers import (
    ServiceProcess,
    ThreadedHttpServer,
    create_streams,
    free_port,
    nats_server,
    redis_server,
    start_all,
)

NATS_IMAGE = "nats:2.11.9-alpine"
REDIS_IMAGE = "redis:7.4.6-alpine"
POSTGRES_IMAGE = "postgres:16.10-alpine"


def _use_testcontainers() -> bool:
    if os.environ.get("COSTWARDEN_TESTCONTAINERS") != "1":
        return False
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


USE_CONTAINERS = _use_testcontainers()

SERVER_TIERS = ("system", "service", "adapter")  # heaviest first
TIER_SECONDS = {"system": 60.0, "service": 20.0, "adapter": 5.0, "unit": 1.0}  # a module's guess, before a run
SERVER_FIXTURES = {"nats_srv", "nats_url", "redis_url", "pg_server_url", "database_url", "fresh_database", "base_env",
                   "limiter", "gateway", "cost_service", "nc", "db"}
MODULE_SECONDS = "costwarden/module_seconds"
# A fresh clone (CI) has no last run: each module's seconds measured on a fresh clone, for the first order.
COMMITTED_SECONDS = Path(__file__).parent / "module_seconds.json"

# Under `-n`, each module runs on one worker (its module fixtures are set up once), except these, which
# run one after another on one worker: the soak loads the whole machine, and the clusters' failover
# tests measure how quickly a decision comes while a node is down.
ONE_AT_A_TIME = ("tests/integration/test_soak.py", "tests/integration/test_redis_cluster.py",
                 "tests/integration/test_nats_cluster.py")


def tier_of(item: pytest.Item) -> str:
    tiers = {mark.name for mark in item.iter_markers() if mark.name in SERVER_TIERS}
    servers = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if len(tiers) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(sorted(tiers))}: one tier only")
    if not tiers and "/integration/" in f"/{item.nodeid}":
        raise pytest.UsageError(f"{item.nodeid} has no tier: mark it adapter, service or system (docs/testing.md)")
    if not tiers and servers:
        raise pytest.UsageError(f"{item.nodeid} uses {', '.join(sorted(servers))}: mark it adapter, service or "
                                "system, or give it fakes (docs/testing.md)")
    return tiers.pop() if tiers else "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the unit tests `unit` (before `-m` selects), and order the modules longest first, keeping each
    module's tests together and in order (its fixtures are set up once)."""
    modules: dict[str, list[pytest.Item]] = {}
    guesses: dict[str, float] = {}
    for item in items:
        tier = tier_of(item)
        if tier == "unit":
            item.add_marker(pytest.mark.unit)
        module = item.nodeid.split("::")[0]
        modules.setdefault(module, []).append(item)
        guesses[module] = max(guesses.get(module, 0.0), TIER_SECONDS[tier])
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    measured = {**json.loads(COMMITTED_SECONDS.read_text()), **(cache.get(MODULE_SECONDS, {}) if cache else {})}
    seconds = {module: measured.get(module, guesses[module]) for module in modules}
    one_at_a_time = sum(seconds[module] for module in modules if module in ONE_AT_A_TIME)  # one unit of work
    order = sorted(modules, key=lambda module: -(one_at_a_time if module in ONE_AT_A_TIME else seconds[module]))
    items[:] = [item for module in order for item in modules[module]]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "one-at-a-time" if module in ONE_AT_A_TIME else module

    return ModuleScheduling(config, log)


_module_seconds: dict[str, float] = {}  # this run's, each module's setup, call and teardown


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::")[0]
    _module_seconds[module] = _module_seconds.get(module, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep each module's seconds for the next run's order (the controller's, under xdist, which hears
    every worker's reports)."""
    cache = getattr(session.config, "cache", None)
    if cache is not None and _module_seconds and not hasattr(session.config, "workerinput"):
        cache.set(MODULE_SECONDS, {**cache.get(MODULE_SECONDS, {}), **_module_seconds})


@pytest.fixture(scope="session")
def nats_srv():
    """(server or None, url). The server object can be stopped and started for fault tests."""
    if USE_CONTAINERS:
        from testcontainers.nats import NatsContainer

        with NatsContainer(NATS_IMAGE).with_command("-js") as container:
            create_streams(container.nats_uri())
            yield None, container.nats_uri()
        return
    server, url = nats_server()
    yield server, url
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_srv) -> str:
    return nats_srv[1]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if USE_CONTAINERS:
        from testcontainers.redis import RedisContainer

        with RedisContainer(REDIS_IMAGE) as container:
            yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        return
    private = redis_server()
    if private is None:
        yield os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        return
    server, url = private
    yield url
    server.stop()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    if USE_CONTAINERS:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield container.get_connection_url()
        return
    yield os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_url(pg_server_url) -> Iterator[str]:
    name = f"costwarden_test_{uuid.uuid4().hex[:10]}"
    url = _with_database(pg_server_url, name)
    asyncio.run(apply_migrations(url))
    yield url

    async def drop() -> None:
        conn = await asyncpg.connect(_with_database(pg_server_url, "postgres"))
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="session")
def providers() -> Iterator[dict[str, ThreadedHttpServer]]:
    """Two real OpenAI-compatible servers on loopback, playing Together.ai and OpenAI."""
    servers = {name: ThreadedHttpServer(create_simulator(name)).start() for name in ("together_ai", "openai")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def anthropic_sim() -> Iterator[ThreadedHttpServer]:
    """The simulator in its Anthropic mode (the Messages API), on loopback."""
    server = ThreadedHttpServer(create_simulator("anthropic", "anthropic")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_sim() -> Iterator[ThreadedHttpServer]:
    """The simulator in its Azure OpenAI mode (deployment URLs, api-key, api-version), on loopback."""
    server = ThreadedHttpServer(create_simulator("azure", "azure")).start()
    yield server
    server.stop()


def set_faults(server: ThreadedHttpServer, **faults) -> None:
    httpx.post(f"{server.url}/_sim/faults", json=faults).raise_for_status()


def sim_stats(server: ThreadedHttpServer) -> dict[str, int]:
    return httpx.get(f"{server.url}/_sim/stats").json()


@pytest.fixture(scope="session")
def base_env(nats_url, redis_url, database_url, providers) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "TOGETHER_BASE_URL": f"{providers['together_ai'].url}/v1",
        "TOGETHER_API_KEY": "test-together-key",
        "OPENAI_BASE_URL": f"{providers['openai'].url}/v1",
        "OPENAI_API_KEY": "test-openai-key",
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "API_KEY_CACHE_S": "0",
        "LOG_LEVEL": "INFO",
    }


def service_process(name: str, env: dict[str, str], port_var: str) -> ServiceProcess:
    """`python -m services.<name>` on a free port (`port_var`), not started yet."""
    port = free_port()
    return ServiceProcess(name, {**env, port_var: str(port)}, port)


def start_service(name: str, env: dict[str, str], port_var: str) -> ServiceProcess:
    return service_process(name, env, port_var).start()


def start_services(*specs: tuple[str, dict[str, str], str]) -> list[ServiceProcess]:
    """Several services started at once, each given as (name, env, port_var)."""
    return start_all(service_process(*spec) for spec in specs)


@pytest.fixture(scope="session")
def limiter(base_env) -> Iterator[ServiceProcess]:
    service = start_service("limiter", base_env, "LIMITER_PORT")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway(base_env, limiter) -> Iterator[ServiceProcess]:
    service = start_service("api", base_env, "API_PORT")
    yield service
    service.stop()


@pytest.fixture
async def nc(nats_url):
    client = await nats.connect(nats_url)
    yield client
    await client.drain()


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def unique(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique_ip() -> str:
    """A documentation address (RFC 5737): only ever a header value, never a destination."""
    raw = uuid.uuid4().int
    return f"{('192.0.2', '198.51.100', '203.0.113')[raw % 3]}.{(raw >> 8) % 254 + 1}"


@asynccontextmanager
async def migrated_database(pg_server_url: str) -> AsyncIterator[str]:
    """A migrated database of its own, dropped afterwards."""
    name = f"costwarden_iso_{uuid.uuid4().hex[:10]}"
    url = _with_database(pg_server_url, name)
    await apply_migrations(url)
    try:
        yield url
    finally:
        conn = await asyncpg.connect(_with_database(pg_server_url, "postgres"))
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest.fixture
async def fresh_database(pg_server_url):
    """For tests that need global totals no other test touches."""
    async with migrated_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def cost_service(base_env) -> Iterator[ServiceProcess]:
    service = start_service("cost", base_env, "COST_PORT")
    yield service
    service.stop()
