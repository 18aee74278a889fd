"""`make run`: one command that brings a working costwarden up on a developer's machine.

Applies migrations, starts a private NATS (JetStream) if none answers at NATS_URL, starts the local
LLM simulator when no TOGETHER_API_KEY is set, then runs every service as its own process. Ctrl-C
(or SIGTERM) stops them all, each draining its in-flight work first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import nats

from shared.bus import nats_options
from shared.events import utc_now
from shared.logs import configure_logging
from shared.migrate import apply_migrations
from shared.nats_identities import seed_file, write_nats_config
from shared.settings import Settings, is_set
from shared.subjects import ensure_streams

log = logging.getLogger("costwarden.run")

SCALABLE = ("limiter", "cost", "notifier", "health", "backup", "console")
MAX_REPLICAS = 16
RUN_DIR = Path(".run")
IDENTITIES_DIR = RUN_DIR / "nats-identities"
STOP_TIMEOUT_S = 30


def parse_replicas(text: str | None) -> dict[str, int]:
    """`limiter=3,cost=2` -> how many processes of each service to run (one of any not named)."""
    counts = dict.fromkeys(SCALABLE, 1)
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, count = item.partition("=")
        if name == "api":
            raise ValueError("the api takes API_WORKERS=N (worker processes behind one port), not --replicas")
        if name not in SCALABLE:
            raise ValueError(f"--replicas: unknown service {name!r}; choose among {', '.join(SCALABLE)}")
        if not count.isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise ValueError(f"--replicas: {item!r} needs a count from 1 to {MAX_REPLICAS}, as in {name}=3")
        counts[name] = int(count)
    return counts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def nats_reachable(url: str) -> bool:
    """Does a NATS server answer there (it greets every connection with an INFO line)?"""
    parts = urlsplit(url)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), 1)
    except (OSError, TimeoutError):
        return False
    try:
        greeting = await asyncio.wait_for(reader.readline(), 1)
    except (OSError, TimeoutError):
        greeting = b""
    finally:
        writer.close()
    return greeting.startswith(b"INFO")


def nats_server_binary() -> str:
    local = Path(sys.prefix) / "bin" / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("no nats-server found: install the project (make run does) or set NATS_URL")
    return found


async def wait_until(check, what: str, seconds: float = 15) -> None:
    for _ in range(int(seconds * 10)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{what} did not come up within {seconds:.0f}s")


async def http_up(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def start(name: str, args: list[str], env: dict[str, str], log_file: Path | None = None
                ) -> asyncio.subprocess.Process:
    """Start one process; its output joins ours, or goes to `log_file` (a server with its own format)."""
    if log_file is None:
        log.info("starting %s", name)
        return await asyncio.create_subprocess_exec(*args, env=env)
    log.info("starting %s (its log: %s)", name, log_file)
    with log_file.open("ab") as output:
        return await asyncio.create_subprocess_exec(*args, env=env, stdout=output, stderr=output)


def summary(settings: Settings, services: dict[str, int], simulator_url: str | None,
            identities: Path | None = None, admin_key: Path | None = None) -> str:
    """What a person needs once everything is up: where each service answers, and what to do next."""
    host = settings.host
    uses = {"api": "gateway: /v1/chat/completions, /api/agent/*, /api/costs/*, /openapi.json",
            "health": "/health (every dependency), /health/ready", "limiter": "/metrics",
            "cost": "/metrics, /docs/asyncapi.json", "notifier": "/metrics", "backup": "/metrics",
            "console": f"the console: sign in with {f'the admin key in {admin_key}' if admin_key else 'an API key'}"}
    lines = ["costwarden is up:"]
    ordered = sorted(services.items(), key=lambda item: item[0] not in ("api", "console"))  # what people use first
    lines += [f"  {name:<10} {f'http://{host}:{port}':<27} {uses[name.partition('-')[0]]}" for name, port in ordered]
    if simulator_url:
        lines.append(f"  {'simulator':<10} {simulator_url:<27} plays Together.ai (set TOGETHER_API_KEY to use it)")
    cli = str(Path(sys.prefix) / "bin" / "costwarden")
    if identities:
        lines.append(f"  {'bus':<10} {settings.nats_servers[0]:<27} one NATS identity per service ({identities}); "
                     "bus commands need the admin one:")
        cli = f"NATS_NKEY_SEED_FILE={seed_file(identities, 'admin')} {cli}"
    lines += [f"  admin      {cli} keys create --user alice --tier pro   (also: keys list|revoke, backup run|list,"
              " restore, migrate)",
              "  Ctrl-C stops everything."]
    return "\n".join(lines)


Processes = dict[str, asyncio.subprocess.Process]


async def start_nats_if_missing(settings: Settings, env: dict[str, str], processes: Processes) -> Path | None:
    """Start a private nats-server when none answers at NATS_URL, with one NKEY identity per service
    (costwarden nats-config into .run/nats-identities); returns that directory, or None when the bus
    is someone else's."""
    first = settings.nats_servers[0]
    if await nats_reachable(first):
        if not settings.nats_nkey_seed_file:
            log.warning("NATS at %s is used without credentials: anyone who reaches it can publish spend, alerts "
                        "and backup requests (see docs/operating.md, Security)", first)
        return None
    url = urlsplit(first)
    auth = write_nats_config(IDENTITIES_DIR)
    log.info("no NATS at %s: starting nats-server with JetStream (data in %s, one identity per service in %s)",
             first, RUN_DIR / "nats", IDENTITIES_DIR)
    processes["nats"] = await start("nats-server", [
        nats_server_binary(), "-c", str(auth), "-js", "-a", url.hostname or "127.0.0.1", "-p", str(url.port or 4222),
        "-sd", str(RUN_DIR / "nats")], env, log_file=RUN_DIR / "nats-server.log")
    await wait_until(lambda: nats_reachable(first), "nats-server")
    return IDENTITIES_DIR


async def start_simulator_if_no_key(settings: Settings, env: dict[str, str], processes: Processes) -> str | None:
    """The simulator's URL when the gateway is pointed at it (no TOGETHER_API_KEY), else None."""
    if settings.together_api_key is not None:
        return None
    port = settings.simulator_port
    base_url = f"http://127.0.0.1:{port}/v1"
    log.info("no TOGETHER_API_KEY set: the gateway calls the local LLM simulator at %s", base_url)
    processes["simulator"] = await start("simulator", [
        sys.executable, "-m", "services.simulator", "--port", str(port), "--name", "together_ai"], env)
    await wait_until(lambda: http_up(port), "simulator")
    env.update(TOGETHER_BASE_URL=base_url, TOGETHER_API_KEY="simulator")
    return base_url


ADMIN_KEY_FILE = RUN_DIR / "admin-key"


def write_private(path: Path, text: str) -> None:
    """A new file, readable by its owner only from the moment it exists."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text + "\n")


async def first_admin_key(database_url: str) -> Path | None:
    """A new installation has no key to sign in to the console with: make run creates one admin key
    (user `admin`) the first time and keeps it in .run/admin-key, readable by its owner only, never in
    the log. None when the database already has an admin key that this file does not hold."""
    from services.api.pg_key_admin import active_key_id, create_key, list_keys

    conn = await asyncpg.connect(database_url)
    try:
        admins = [key for key in await list_keys(conn, revoked=False) if key.admin]
        if ADMIN_KEY_FILE.exists():
            kept_id = await active_key_id(conn, ADMIN_KEY_FILE.read_text().strip())
            if any(key.id == kept_id and key.active(utc_now()) for key in admins):
                return ADMIN_KEY_FILE
        if admins:
            return None
        _, key = await create_key(conn, "admin", "enterprise", actor="make-run", is_admin=True, label="first admin")
    finally:
        await conn.close()
    write_private(ADMIN_KEY_FILE, key)
    log.info("created a first admin key (user admin) in %s: sign in to the console with it", ADMIN_KEY_FILE)
    return ADMIN_KEY_FILE


def console_env(settings: Settings) -> dict[str, str]:
    """The console's secret (kept in .run/ so that sessions outlive a restart) and where it finds the
    api and the health service."""
    env = {"CONSOLE_API_URL": f"http://127.0.0.1:{settings.api_port}",
           "CONSOLE_HEALTH_URL": f"http://127.0.0.1:{settings.health_port}"}
    if not is_set(settings.console_session_secret):
        secret = RUN_DIR / "console-secret"
        if not secret.exists():
            write_private(secret, secrets.token_urlsafe(32))
        env["CONSOLE_SESSION_SECRET"] = secret.read_text().strip()
    return env


async def start_services(settings: Settings, env: dict[str, str], processes: Processes,
                         identities: Path | None, replicas: dict[str, int]) -> dict[str, int]:
    """Every service, each as many times as `replicas` says: the first on its configured port, the
    others on free ones (each replica serves its own probes and metrics). Returns process name -> port."""
    ports = {"limiter": settings.limiter_port, "cost": settings.cost_port, "notifier": settings.notifier_port,
             "health": settings.health_port, "api": settings.api_port, "console": settings.console_port}
    if settings.s3_backup_bucket:
        ports["backup"] = settings.backup_port
    else:
        log.info("no S3_BACKUP_BUCKET set: the backup worker is not started")
    services: dict[str, int] = {}
    for name, port in ports.items():
        own = {"NATS_NKEY_SEED_FILE": str(seed_file(identities, name).resolve())} if identities else {}
        for replica in range(1, replicas.get(name, 1) + 1):
            process = name if replica == 1 else f"{name}-{replica}"
            services[process] = port if replica == 1 else free_port()
            processes[process] = await start(process, [sys.executable, "-m", f"services.{name}"],
                                             {**env, **own, f"{name.upper()}_PORT": str(services[process])})
    for process, port in services.items():
        await wait_until(lambda port=port: http_up(port), process, seconds=30)
    return services


async def until_stopped_or_failed(processes: Processes) -> list[str]:
    """Wait for Ctrl-C (or SIGTERM), or for a process to exit on its own; the names of those that did."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exits = {asyncio.create_task(p.wait()): name for name, p in processes.items()}
    done, _ = await asyncio.wait([asyncio.create_task(stop.wait()), *exits], return_when=asyncio.FIRST_COMPLETED)
    return [exits[t] for t in done if t in exits]


INFRASTRUCTURE = ("nats", "simulator")


async def stop_all(processes: Processes) -> None:
    """SIGTERM to the services, which drain their in-flight work through NATS, then to what they use
    (nats-server, the simulator); each process has STOP_TIMEOUT_S to stop, then is killed."""
    services = {name: p for name, p in processes.items() if name not in INFRASTRUCTURE}
    await stop(services)
    await stop({name: p for name, p in processes.items() if name in INFRASTRUCTURE})


async def stop(processes: Processes) -> None:
    for process in processes.values():
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for name, process in processes.items():
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("%s did not stop in %ss; killing it", name, STOP_TIMEOUT_S)
            process.kill()


async def main(replicas: dict[str, int]) -> int:
    settings = Settings()
    configure_logging("run", settings.log_level, settings.log_format)
    env = dict(os.environ)
    processes: Processes = {}
    identities = await start_nats_if_missing(settings, env, processes)
    if identities:
        settings = settings.model_copy(update={"nats_nkey_seed_file": str(seed_file(identities, "admin").resolve())})
    applied = await apply_migrations(settings.database_url)
    log.info("migrations: %s", ", ".join(applied) if applied else "up to date")
    admin_key = await first_admin_key(settings.database_url)
    nc = await nats.connect(**nats_options(settings, "admin"))
    await ensure_streams(nc.jetstream(), settings.nats_stream_replicas)
    await nc.close()
    simulator_url = await start_simulator_if_no_key(settings, env, processes)
    env.update(console_env(settings))
    services = await start_services(settings, env, processes, identities, replicas)
    log.info("%s", summary(settings, services, simulator_url, identities, admin_key))
    failed = await until_stopped_or_failed(processes)
    if failed:
        log.error("%s exited; stopping the rest", ", ".join(failed))
    await stop_all(processes)
    log.info("stopped")
    return 1 if failed else 0


def run(replicas: str | None = None) -> int:
    try:
        counts = parse_replicas(replicas)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    RUN_DIR.mkdir(exist_ok=True)
    return asyncio.run(main(counts))
