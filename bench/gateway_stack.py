"""The processes the gateway benchmarks measure, started once: the LLM simulator as the upstream, the
bare relay with its nats-py echo (the floor), and the gateway with its limiter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from services.api.pg_key_admin import create_key
from tests.servers import ServiceProcess, free_port, port_open
from tests.support.polling import wait_for


def start_script(name: str, env: dict[str, str], args: list[str], port: int | None = None) -> ServiceProcess:
    process = ServiceProcess(name, env, port or 0)
    process.process = subprocess.Popen([sys.executable, *args], env=process.env)
    if port:
        wait_for(lambda: port_open(port), name)
    return process


@dataclass
class GatewayStack:
    upstream: ServiceProcess
    nats_echo: ServiceProcess
    bare: ServiceProcess
    limiter: ServiceProcess
    api: ServiceProcess
    key: str

    @property
    def direct_url(self) -> str:
        return f"{self.upstream.url}/v1/chat/completions"

    def targets(self) -> dict[str, tuple[str, dict[str, str]]]:
        """name -> (URL, headers) of the three ways to make the same call."""
        return {"direct": (self.direct_url, {"Authorization": "Bearer bench"}),
                "bare": (f"{self.bare.url}/v1/chat/completions", {}),
                "gateway": (f"{self.api.url}/v1/chat/completions", {"Authorization": f"Bearer {self.key}"})}


@asynccontextmanager
async def gateway_stack(env: dict[str, str], database_url: str) -> AsyncIterator[GatewayStack]:
    upstream_port = free_port()
    upstream = start_script("simulator", env, ["-m", "services.simulator", "--port", str(upstream_port)],
                            upstream_port)
    direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    env = {**env, "TOGETHER_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1", "TOGETHER_API_KEY": "bench"}
    nats_echo = start_script("nats-echo", env, ["-m", "bench.nats_echo", env["NATS_URL"]])
    bare_port = free_port()
    bare = start_script("bare-gateway", {**env, "BENCH_UPSTREAM_URL": direct_url},
                        ["-c", f"from shared.service_app import serve; serve('bench.bare_gateway:create_app', "
                               f"{bare_port})"], bare_port)
    limiter_port = free_port()
    limiter = ServiceProcess("limiter", {**env, "LIMITER_PORT": str(limiter_port)}, limiter_port).start()
    api_port = free_port()
    api = ServiceProcess("api", {**env, "API_PORT": str(api_port)}, api_port).start()
    try:
        conn = await asyncpg.connect(database_url)
        _, key = await create_key(conn, "bench-user", "enterprise", actor="bench")
        await conn.close()
        yield GatewayStack(upstream, nats_echo, bare, limiter, api, key)
    finally:
        for process in (api, limiter, bare, nats_echo, upstream):
            process.stop()
