"""Test harness: real servers only.

NATS: a private `nats-server -js` per test session. Redis: a private `redis-server` where the binary
exists, else REDIS_URL. Postgres: a fresh database per session on DATABASE_URL's server. With
COSTWARDEN_TESTCONTAINERS=1 and a reachable Docker engine, NATS, Redis and Postgres come from pinned
testcontainers images instead. LLM providers: the project's OpenAI-compatible simulator on loopback.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import nats
import pytest

from services.deploy.migrate import apply_migrations
from services.simulator.app import create_app as create_simulator
from tests.servers import ServiceProcess, ThreadedHttpServer, create_streams, free_port, nats_server, redis_server

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


def start_service(name: str, env: dict[str, str], port_var: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(name, {**env, port_var: str(port)}, port).start()


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
