"""The processes the gateway benchmarks measure, started once: the LLM simulator as the upstream, the
relays that are the floors (the bare relay with its nats-py echo; with a bare Redis decision; with the
real limiter; as a FastAPI route), and the gateway with its limiter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from services.keys.pg_key_admin import create_key
from tests.servers import ServiceProcess, free_port, port_open
from tests.support.polling import wait_for


def start_script(name: str, env: dict[str, str], args: list[str], port: int | None = None) -> ServiceProcess:
    process = ServiceProcess(name, env, port or 0)
    process.process = subprocess.Popen([sys.executable, *args], env=process.env)
    if port:
        wait_for(lambda: port_open(port), name)
    return process


# The call every gateway benchmark makes.
BODY = {"model": "meta-llama/Llama-3-8b-chat-hf", "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 8}
# The floors, each adding one thing the gateway has (bench/bare_gateway.py): name -> (app factory,
# what its question goes to, label).
FLOORS = {
    "bare": ("bench.bare_gateway:create_app", "echo", "bare relay (floor)"),
    "redis": ("bench.bare_gateway:create_app", "redis", "relay + Redis decision"),
    "limiter": ("bench.bare_gateway:create_app", "limiter", "relay + limiter"),
    "fastapi": ("bench.bare_gateway:create_fastapi_app", "limiter", "relay + limiter, FastAPI"),
}
LABELS = {"direct": "direct to upstream", **{name: label for name, (_, _, label) in FLOORS.items()},
          "gateway": "through the gateway", "litellm": "LiteLLM proxy"}


def floor_command(name: str, port: int, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The arguments to Python and the environment of one floor's process (env holds the upstream)."""
    factory, asks, _ = FLOORS[name]
    return (["-c", f"from shared.service_app import serve; serve({factory!r}, {port})"],
            {**env, "BENCH_ASKS": asks, "BENCH_UPSTREAM_URL": env["TOGETHER_BASE_URL"] + "/chat/completions"})


@dataclass
class GatewayStack:
    env: dict[str, str]
    upstream: ServiceProcess
    nats_echo: ServiceProcess
    floors: dict[str, ServiceProcess]
    limiter: ServiceProcess
    api: ServiceProcess
    key: str

    @property
    def direct_url(self) -> str:
        return f"{self.upstream.url}/v1/chat/completions"

    def targets(self) -> dict[str, tuple[str, dict[str, str]]]:
        """name -> (URL, headers) of the ways to make the same call, in LABELS' order."""
        return {"direct": (self.direct_url, {"Authorization": "Bearer bench"}),
                **{name: (f"{floor.url}/v1/chat/completions", {}) for name, floor in self.floors.items()},
                "gateway": (f"{self.api.url}/v1/chat/completions", {"Authorization": f"Bearer {self.key}"})}


@asynccontextmanager
async def gateway_stack(env: dict[str, str], database_url: str) -> AsyncIterator[GatewayStack]:
    upstream_port = free_port()
    upstream = start_script("simulator", env, ["-m", "services.simulator", "--port", str(upstream_port)],
                            upstream_port)
    env = {**env, "TOGETHER_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1", "TOGETHER_API_KEY": "bench"}
    nats_echo = start_script("nats-echo", env, ["-m", "bench.nats_echo", env["NATS_URL"], env["REDIS_URL"]])
    limiter_port = free_port()
    limiter = ServiceProcess("limiter", {**env, "LIMITER_PORT": str(limiter_port)}, limiter_port).start()
    floors = {}
    for name in FLOORS:
        port = free_port()
        args, floor_env = floor_command(name, port, env)
        floors[name] = start_script(f"floor-{name}", floor_env, args, port)
    api_port = free_port()
    api = ServiceProcess("api", {**env, "API_PORT": str(api_port)}, api_port).start()
    try:
        conn = await asyncpg.connect(database_url)
        _, key = await create_key(conn, "bench-user", "enterprise", actor="bench")
        await conn.close()
        yield GatewayStack(env, upstream, nats_echo, floors, limiter, api, key)
    finally:
        for process in (api, *floors.values(), limiter, nats_echo, upstream):
            process.stop()
