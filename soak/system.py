"""The whole system on private servers, as the soak runs it: a three-node NATS cluster, Redis, a private
PostgreSQL cluster it can stop, two simulators playing Together.ai and OpenAI, a Slack/webhook sink, an
SMTP server, an S3 server, and every service with replicas, each process its own, to kill and restart."""

from __future__ import annotations

import json
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx

from services.deploy.migrate import apply_migrations
from services.simulator.app import create_app as create_simulator
from shared.policy import TierLimits
from tests.servers import (
    PostgresServer,
    ProcessServer,
    ServiceProcess,
    ThreadedHttpServer,
    free_port,
    nats_cluster,
    s3_server,
    start_all,
    stop_all,
)
from tests.sinks import HttpSink, SmtpSink

# Tiers sized for the run: free callers hit their request limit and pro callers their daily budget early
# (denials under load), enterprise callers keep the providers busy to the end.
SOAK_TIERS = {
    "anonymous": TierLimits(requests=3, strict_requests=1, tokens_per_minute=4_000, daily_budget_usd=Decimal("0.10")),
    "free": TierLimits(requests=30, strict_requests=2, tokens_per_minute=20_000, daily_budget_usd=Decimal("1.00")),
    "pro": TierLimits(requests=100_000, strict_requests=20, tokens_per_minute=200_000,
                      daily_budget_usd=Decimal("0.005")),
    "enterprise": TierLimits(requests=100_000, strict_requests=200, tokens_per_minute=2_000_000,
                             daily_budget_usd=Decimal("250.00")),
}
PROVIDER_TIMEOUT_S = 10  # how long the gateway waits for a provider; the timeouts fault answers slower
REPLICAS = {"limiter": 3, "cost": 2, "notifier": 2, "health": 2, "backup": 2, "api": 1}
# Low thresholds, so that the soak's spend raises alerts while the faults land.
THRESHOLDS = {"hourly": {"warning": "0.001", "critical": "0.002"}, "daily": {"warning": "0.003"},
              "monthly": {}, "user_daily": {"warning": "0.0005"}}


@dataclass
class Replica:
    service: str
    index: int
    env: dict[str, str]
    process: ServiceProcess | None = None
    started_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    def prepare(self) -> ServiceProcess:
        """Its process on a new free port, not started yet."""
        port = free_port()
        self.process = ServiceProcess(self.service, {**self.env, f"{self.service.upper()}_PORT": str(port)}, port)
        return self.process

    def start(self) -> None:
        self.prepare().start(timeout_s=60)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.process is not None and self.process.process.poll() is None

    def rss_kib(self) -> int | None:
        """Resident memory, or None while the process is not running (killed by a fault, say)."""
        if not self.alive():
            return None
        assert self.process is not None and self.process.process is not None
        try:
            status = Path(f"/proc/{self.process.process.pid}/status").read_text()
        except FileNotFoundError:
            return None
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(found[1]) if found else None


@dataclass
class System:
    nats: list[ProcessServer]
    nats_urls: list[str]
    redis: ProcessServer
    postgres: PostgresServer
    database_url: str
    providers: dict[str, ThreadedHttpServer]
    http_sink: HttpSink
    smtp: SmtpSink
    s3: object
    replicas: list[Replica] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        api = next(r for r in self.replicas if r.service == "api")
        assert api.process is not None
        return api.process.url

    def of(self, service: str) -> list[Replica]:
        return [r for r in self.replicas if r.service == service]

    def set_provider_faults(self, **faults: object) -> None:
        for server in self.providers.values():
            httpx.post(f"{server.url}/_sim/faults", json=faults, timeout=5).raise_for_status()

    def stop(self) -> None:
        stop_all(replica.process for replica in self.replicas if replica.process is not None)
        for server in self.providers.values():
            server.stop()
        self.http_sink.stop()
        self.smtp.stop()
        self.s3.stop()  # type: ignore[attr-defined]
        self.redis.stop()
        self.postgres.stop()
        for node in self.nats:
            node.stop()


async def start_system(log) -> System:
    """The servers first, side by side (PostgreSQL's initdb, the NATS nodes electing a leader), then every
    replica at once."""
    redis_port = free_port()
    # with its append-only file: limit counters survive the restart the soak inflicts, as they must in production
    redis = ProcessServer("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "yes", "--dir", tempfile.mkdtemp(prefix="soak-redis-")], redis_port)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    with ThreadPoolExecutor(4) as pool:
        cluster, pg, redis_up, s3_up = (pool.submit(nats_cluster, 3), pool.submit(started_postgres),
                                        pool.submit(redis.start), pool.submit(s3_server, "soak-backups"))
        providers = {name: ThreadedHttpServer(create_simulator(name)).start() for name in ("together_ai", "openai")}
        postgres = pg.result()
        database_url = postgres.url.rsplit("/", 1)[0] + "/soak"
        await apply_migrations(database_url)
        (nodes, urls), _, (s3, s3_env) = cluster.result(), redis_up.result(), s3_up.result()
    log("servers up: a NATS cluster of three, Redis, PostgreSQL, S3 and two simulated providers")
    http_sink, smtp = HttpSink(), SmtpSink(password="soak-smtp")
    config = Path(tempfile.mkdtemp(prefix="soak-")) / "costwarden.yaml"
    config.write_text(json.dumps({"thresholds": THRESHOLDS,
                                  "tiers": {name: tier.model_dump(mode="json") for name, tier in SOAK_TIERS.items()}}))
    env = {
        **s3_env, "NATS_URL": ",".join(urls), "NATS_STREAM_REPLICAS": "3", "REDIS_URL": redis_url,
        "DATABASE_URL": database_url, "COSTWARDEN_CONFIG": str(config), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
        "TOGETHER_BASE_URL": f"{providers['together_ai'].url}/v1", "TOGETHER_API_KEY": "soak-together",
        "OPENAI_BASE_URL": f"{providers['openai'].url}/v1", "OPENAI_API_KEY": "soak-openai",
        "SLACK_WEBHOOK_URL": f"{http_sink.url}/slack/T0/B0/soak", "ALERT_WEBHOOK_URL": f"{http_sink.url}/hook/soak",
        "ALERT_WEBHOOK_SECRET": "soak-signing", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
        "SMTP_USERNAME": "alerts", "SMTP_PASSWORD": "soak-smtp", "ALERT_EMAIL": "oncall@example.com",
        "NOTIFY_BACKOFF_INITIAL_S": "0.5", "NOTIFY_BACKOFF_MAX_S": "4", "TRUSTED_PROXIES": "127.0.0.1/32",
        "API_KEY_CACHE_S": "5", "PROVIDER_TIMEOUT_S": str(PROVIDER_TIMEOUT_S), "HEALTH_INTERVAL_S": "2",
        "BACKUP_SCHEDULE": "0 3 * * *", "S3_BACKUP_PREFIX": "soak",
    }
    system = System(nodes, urls, redis, postgres, database_url, providers, http_sink, smtp, s3)
    system.replicas = [Replica(service, index, env) for service, count in REPLICAS.items()
                       for index in range(1, count + 1)]
    start_all(replica.prepare() for replica in system.replicas)
    for replica in system.replicas:
        replica.started_at = time.monotonic()
        log(f"started {replica.name} on port {replica.process.port if replica.process else '?'}")
    return system


def started_postgres() -> PostgresServer:
    postgres = PostgresServer()
    postgres.start()
    return postgres
