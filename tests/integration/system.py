"""`costwarden run` (what `make run` starts) in a folder of its own, against a private database and
NATS, with private providers, S3 and a Slack sink: the whole system, as a new user gets it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from services.simulator.app import create_app as create_simulator
from tests.servers import ThreadedHttpServer, free_port
from tests.sinks import HttpSink
from tests.support.polling import wait_for

SERVICES = ("api", "limiter", "cost", "notifier", "health", "backup", "console")


def probing(timeout_s: float = 5) -> httpx.Client:
    """A client for asking again and again whether something answers: one TLS context for all its tries
    (httpx.get makes one per call, some 25 ms of CPU, taken from the processes being waited for), and a
    new connection for each (no kept-alive one outlives the process it went to)."""
    return httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_keepalive_connections=0))


def run_env(database_url: str, redis_url: str) -> tuple[dict[str, str], dict[str, int]]:
    """What `costwarden run` reads, with every port free and no provider key (it starts the simulator)."""
    ports = {name: free_port() for name in ("NATS", "API_PORT", "LIMITER_PORT", "COST_PORT", "NOTIFIER_PORT",
                                            "HEALTH_PORT", "CONSOLE_PORT", "SIMULATOR_PORT")}
    env = {k: v for k, v in os.environ.items() if k not in ("TOGETHER_API_KEY", "OPENAI_API_KEY", "LOG_FORMAT")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, NATS_URL=f"nats://127.0.0.1:{ports['NATS']}",
               **{name: str(port) for name, port in ports.items() if name != "NATS"})
    return env, ports


@contextmanager
def costwarden_run(database_url: str, redis_url: str, s3_env: dict[str, str], folder: Path, *args: str,
                   **extra_env: str) -> Iterator[dict]:
    """`costwarden run *args`, up (every service live and its summary logged); its log (JSON lines) is in
    folder/run.log, and "returncode" is set once it has stopped on Ctrl-C."""
    providers = {name: ThreadedHttpServer(create_simulator(name)).start() for name in ("together_ai", "openai")}
    slack = HttpSink()
    ports = {name: free_port() for name in ("NATS", *(f"{s.upper()}_PORT" for s in SERVICES))}
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    env.update(s3_env, DATABASE_URL=database_url, REDIS_URL=redis_url, NATS_URL=f"nats://127.0.0.1:{ports['NATS']}",
               TOGETHER_BASE_URL=f"{providers['together_ai'].url}/v1", TOGETHER_API_KEY="test-together-key",
               OPENAI_BASE_URL=f"{providers['openai'].url}/v1", OPENAI_API_KEY="test-openai-key",
               SLACK_WEBHOOK_URL=f"{slack.url}/slack/T0/B0/observed", HEALTH_INTERVAL_S="1",
               API_KEY_CACHE_S="0", PROVIDER_MAX_RETRIES="0",
               **{name: str(port) for name, port in ports.items() if name != "NATS"}, **extra_env)
    log = folder / "run.log"
    with log.open("wb") as output:
        run = subprocess.Popen([sys.executable, "-m", "services.cli", "run", *args], env=env, cwd=folder,
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def all_live(client: httpx.Client) -> bool:
        try:
            return all(client.get(f"http://127.0.0.1:{ports[f'{s.upper()}_PORT']}/health/live").is_success
                       for s in SERVICES)
        except httpx.TransportError:
            return False

    running = {"ports": ports, "providers": providers, "slack": slack, "database_url": database_url,
               "admin_seed": folder / ".run" / "nats-identities" / "admin.nk", "folder": folder, "run": run,
               "log": log, "url": {s: f"http://127.0.0.1:{ports[f'{s.upper()}_PORT']}" for s in SERVICES}}
    try:
        with probing() as client:
            wait_for(lambda: all_live(client), "make run's services", 90)
        wait_for(lambda: "costwarden is up" in log.read_text(), "make run's summary", 90)
        yield running
    finally:
        run.send_signal(signal.SIGINT)
        running["returncode"] = run.wait(90)
        slack.stop()
        for server in providers.values():
            server.stop()
