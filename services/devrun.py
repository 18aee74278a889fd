"""`make run`: one command that brings a working costwarden up on a developer's machine.

Applies migrations, starts a private NATS (JetStream) if none answers at NATS_URL, starts the local
LLM simulator playing Together.ai when no TOGETHER_API_KEY is set, and playing Anthropic and Azure
OpenAI when the configuration declares no provider of that kind (simulated_providers.py), then runs
every service as its own process and keeps it running: a process that exits is started again after a
backoff, and a crash loop stops the run. Ctrl-C (or SIGTERM) stops them all, each draining its in-flight
work first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import nats
import yaml

from services.deploy.migrate import apply_migrations
from services.deploy.nats_identities import seed_file, write_nats_config
from services.deploy.settings import DeploySettings as Settings
from services.simulated_providers import SIMULATOR_KEY_ENV, to_simulate, with_simulated
from shared.bus import nats_options
from shared.config_file import ConfigDocument
from shared.events import utc_now
from shared.logs import configure_logging
from shared.settings import is_set
from shared.subjects import ensure_streams

log = logging.getLogger("costwarden.run")

SCALABLE = ("limiter", "cost", "notifier", "health", "backup", "console")
MAX_REPLICAS = 16
RUN_DIR = Path(".run")
IDENTITIES_DIR = RUN_DIR / "nats-identities"
STOP_TIMEOUT_S = 30

FIRST_BACKOFF_S = 0.5  # before the first restart; doubled for each short run in a row
MAX_BACKOFF_S = 8.0
STEADY_AFTER_S = 30.0  # a process up this long before it exited starts again after FIRST_BACKOFF_S
CRASH_LOOP_EXITS = 5  # this many exits of one process within CRASH_LOOP_WINDOW_S: give up, stop the run
CRASH_LOOP_WINDOW_S = 60.0


class StartFailed(Exception):
    """Something the run needs did not start; the message says what."""


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


LISTEN_PORTS_FROM = 10_000


def ephemeral_ports_start() -> int:
    """Where the kernel starts picking the local ports of outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port to listen on, free now and chosen below the kernel's range for outgoing connections: a port
    the kernel hands out (bind to port 0) can be taken by any process's next outgoing connection before
    the server that was meant to listen there binds it."""
    high = ephemeral_ports_start() - 1
    while True:
        port = random.randint(LISTEN_PORTS_FROM, high)
        if bindable(port):
            return port


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
        raise StartFailed("no nats-server found: install the project (make run does) or set NATS_URL")
    return found


async def wait_until(check, what: str, seconds: float = 15) -> None:
    for _ in range(int(seconds * 10)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise StartFailed(f"{what} did not come up within {seconds:.0f}s")


async def http_up(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def spawn(name: str, args: list[str], env: dict[str, str], log_file: Path | None = None
                ) -> asyncio.subprocess.Process:
    """Start one process in a process group of its own (a terminal's Ctrl-C reaches the run only, which
    stops everything in order); its output joins ours, or goes to `log_file` (a server with its own format)."""
    if log_file is None:
        process = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                       process_group=0)
        log.info("started %s (pid %d)", name, process.pid)
        return process
    with log_file.open("ab") as output:
        process = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=output, stderr=output, process_group=0)
    log.info("started %s (pid %d; its log: %s)", name, process.pid, log_file)
    return process


def summary(settings: Settings, services: dict[str, int], simulators: Sequence[Simulator],
            identities: Path | None = None, admin_key: Path | None = None, config: Path | None = None) -> str:
    """What a person needs once everything is up: where each service answers, and what to do next."""
    host = settings.host
    uses = {"api": "gateway: /v1/chat/completions, /api/agent/*, /api/costs/*, /openapi.json",
            "health": "/health (every dependency), /health/ready", "limiter": "/metrics",
            "cost": "/metrics, /docs/asyncapi.json", "notifier": "/metrics", "backup": "/metrics",
            "console": f"the console: sign in with {f'the admin key in {admin_key}' if admin_key else 'an API key'}"}
    ordered = sorted(services.items(), key=lambda item: item[0] not in ("api", "console"))  # what people use first
    rows = [(name, f"http://{host}:{port}", uses[name.partition("-")[0]]) for name, port in ordered]
    rows += [(simulator.name, simulator.url, f"plays {simulator.plays}") for simulator in simulators]
    width = max(10, *(len(name) for name, _, _ in rows))
    lines = ["costwarden is up:", *(f"  {name:<{width}} {url:<27} {use}" for name, url, use in rows)]
    if config:
        lines.append(f"  {'config':<{width}} {str(config):<27} what every service reads (written at each run)")
    cli = str(Path(sys.prefix) / "bin" / "costwarden")
    if identities:
        lines.append(f"  {'bus':<{width}} {settings.nats_servers[0]:<27} one NATS identity per service ({identities}); "
                     "bus commands need the admin one:")
        cli = f"NATS_NKEY_SEED_FILE={seed_file(identities, 'admin')} {cli}"
    lines += [f"  {'admin':<{width}} {cli} keys create --user alice --tier pro   (also: keys list|revoke, backup "
              "run|list, restore, migrate)",
              "  Ctrl-C stops everything."]
    return "\n".join(lines)


async def start_nats_if_missing(settings: Settings, env: dict[str, str], supervisor: Supervisor) -> Path | None:
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
    await supervisor.start("nats-server", [
        nats_server_binary(), "-c", str(auth), "-js", "-a", url.hostname or "127.0.0.1", "-p", str(url.port or 4222),
        "-sd", str(RUN_DIR / "nats")], env, log_file=RUN_DIR / "nats-server.log")
    await wait_until(lambda: nats_reachable(first), "nats-server")
    return IDENTITIES_DIR


@dataclass(frozen=True)
class Simulator:
    """A simulator process make run started: where it answers and what it plays."""

    name: str
    url: str
    plays: str
    port: int


async def start_simulator(name: str, kind: str, port: int, env: dict[str, str], supervisor: Supervisor) -> None:
    await supervisor.start(name, [sys.executable, "-m", "services.simulator", "--port", str(port), "--name", name,
                                  "--kind", kind], env)


async def simulators_answer(simulators: Sequence[Simulator]) -> None:
    """Started together, each answers in its own time: the services start once all of them do."""
    for simulator in simulators:
        await wait_until(lambda port=simulator.port: http_up(port), simulator.name)


async def start_simulator_if_no_key(settings: Settings, env: dict[str, str], supervisor: Supervisor
                                    ) -> Simulator | None:
    """The simulator playing Together.ai when the gateway is pointed at it (no TOGETHER_API_KEY), else None;
    started, not yet answering (simulators_answer)."""
    if settings.together_api_key is not None:
        return None
    port = settings.simulator_port
    base_url = f"http://127.0.0.1:{port}/v1"
    log.info("no TOGETHER_API_KEY set: the gateway calls the local LLM simulator at %s", base_url)
    await start_simulator("simulator", "openai", port, env, supervisor)
    env.update(TOGETHER_BASE_URL=base_url, TOGETHER_API_KEY="simulator")
    return Simulator("simulator", base_url, "Together.ai (set TOGETHER_API_KEY to use it)", port)


GENERATED_CONFIG = RUN_DIR / "costwarden.yaml"


async def start_simulated_kinds(settings: Settings, env: dict[str, str], supervisor: Supervisor) -> list[Simulator]:
    """A simulator for each kind of provider the user's configuration declares none of (Anthropic, Azure
    OpenAI), started, not yet answering (simulators_answer); and the configuration every service then
    reads: .run/costwarden.yaml, the user's file (if any) with a provider of each simulated kind and a
    public model routed to it."""
    path = settings.costwarden_config
    user = ConfigDocument.read(path).data if path else {}
    kinds = to_simulate(user)
    if not kinds:
        return []
    ports = {simulated: free_port() for simulated in kinds}
    for simulated, port in ports.items():
        await start_simulator(f"simulator-{simulated.provider}", simulated.kind, port, env, supervisor)
    base_urls = {simulated: f"http://127.0.0.1:{port}" for simulated, port in ports.items()}
    GENERATED_CONFIG.write_text(
        f"# Written by costwarden run: {path or 'the built-in configuration'} with the providers it simulates.\n"
        f"# Edit {path or 'your own file (COSTWARDEN_CONFIG)'}, not this one: it is written again at every run.\n"
        + yaml.safe_dump(with_simulated(user, base_urls), sort_keys=False))
    env.update({SIMULATOR_KEY_ENV: "simulator", "COSTWARDEN_CONFIG": str(GENERATED_CONFIG.resolve())})
    log.info("the gateway calls the simulator as %s too (configuration: %s)",
             ", ".join(f"{s.plays} ({s.model})" for s in kinds), GENERATED_CONFIG)
    return [Simulator(f"simulator-{simulated.provider}", url,
                      f"{simulated.plays}: provider {simulated.provider}, model {simulated.model}", ports[simulated])
            for simulated, url in base_urls.items()]


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
    from services.keys.pg_key_admin import active_key_id, create_key, list_keys

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


async def start_services(settings: Settings, env: dict[str, str], supervisor: Supervisor,
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
            await supervisor.start(process, [sys.executable, "-m", f"services.{name}"],
                                   {**env, **own, f"{name.upper()}_PORT": str(services[process])})
    for process, port in services.items():  # one that keeps exiting is reported as a crash loop before this ends
        await wait_until(lambda port=port: http_up(port), process, seconds=CRASH_LOOP_WINDOW_S)
    return services


@dataclass(frozen=True)
class Run:
    """One life of a supervised process, in seconds of a monotonic clock."""

    started_at: float
    ended_at: float


def restart_delay(runs: Sequence[Run]) -> float | None:
    """Seconds to wait before starting a process again once the last of its `runs` has ended; None when
    that is its CRASH_LOOP_EXITS-th end within CRASH_LOOP_WINDOW_S (a crash loop: give up). The wait is
    FIRST_BACKOFF_S, doubled for each run in a row shorter than STEADY_AFTER_S, at most MAX_BACKOFF_S."""
    last = runs[-1].ended_at
    if sum(last - run.ended_at < CRASH_LOOP_WINDOW_S for run in runs) >= CRASH_LOOP_EXITS:
        return None
    short = sum(1 for _ in takewhile(lambda run: run.ended_at - run.started_at < STEADY_AFTER_S, reversed(runs)))
    return min(FIRST_BACKOFF_S * 2 ** max(short - 1, 0), MAX_BACKOFF_S)


def exit_status(returncode: int) -> str:
    """`status 1`, or `killed by SIGKILL` (asyncio gives a death by signal as minus the signal's number)."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


@dataclass
class Child:
    """A supervised process, started the same way every time: same arguments, environment and port."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_file: Path | None
    process: asyncio.subprocess.Process
    started_at: float
    runs: list[Run] = field(default_factory=list)


Processes = dict[str, asyncio.subprocess.Process]


class Supervisor:
    """Starts processes and keeps them running: one that exits is logged with its status and started
    again after `restart_delay`; a crash loop sets `gave_up` to what the run stops for."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}
        self.keepers: list[asyncio.Task[None]] = []
        self.gave_up: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def processes(self) -> Processes:
        return {name: child.process for name, child in self.children.items()}

    async def start(self, name: str, args: list[str], env: dict[str, str], log_file: Path | None = None) -> None:
        process = await spawn(name, args, env, log_file)
        self.children[name] = child = Child(name, args, dict(env), log_file, process, time.monotonic())
        self.keepers.append(asyncio.create_task(self.keep(child), name=f"keep {name}"))

    async def keep(self, child: Child) -> None:
        while True:
            returncode = await child.process.wait()
            ended_at = time.monotonic()
            child.runs.append(Run(child.started_at, ended_at))
            exited = f"{child.name} exited ({exit_status(returncode)}) after {ended_at - child.started_at:.1f}s up"
            delay = restart_delay(child.runs)
            if delay is None:
                log.error("%s: %d exits within %.0fs, a crash loop; not restarting it", exited, CRASH_LOOP_EXITS,
                          CRASH_LOOP_WINDOW_S)
                return self.give_up(f"{child.name} is in a crash loop ({CRASH_LOOP_EXITS} exits within "
                                    f"{CRASH_LOOP_WINDOW_S:.0f}s; its lines above say why)")
            log.warning("%s; restarting it in %.1fs", exited, delay)
            await asyncio.sleep(delay)
            try:
                child.process = await spawn(child.name, child.args, child.env, child.log_file)
            except OSError as exc:
                return self.give_up(f"{child.name} could not be started again: {exc}")
            child.started_at = time.monotonic()

    def give_up(self, failure: str) -> None:
        if not self.gave_up.done():
            self.gave_up.set_result(failure)

    async def stop_all(self) -> None:
        """Restart nothing more (a restart being started is cancelled, its process with it), then stop
        everything in order."""
        for keeper in self.keepers:
            keeper.cancel()
        await asyncio.gather(*self.keepers, return_exceptions=True)
        await stop_all(self.processes)


async def until_stopped_or_failed(supervisor: Supervisor, bring_up: Coroutine[Any, Any, None]) -> str | None:
    """Run `bring_up`, then keep serving: until Ctrl-C, SIGTERM or SIGHUP (None), or until a process
    crash-loops or something fails to start (what failed). Other errors of `bring_up` propagate."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait())
    starting = asyncio.create_task(bring_up)
    try:
        ends: list[asyncio.Future[Any]] = [stopped, supervisor.gave_up]
        await asyncio.wait([*ends, starting], return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    except StartFailed as exc:
        return str(exc)
    finally:
        stopped.cancel()
        starting.cancel()
        await asyncio.wait([starting])
    return supervisor.gave_up.result() if supervisor.gave_up.done() else None


def infrastructure(name: str) -> bool:
    """What the services use: nats-server and the simulators."""
    return name == "nats-server" or name.partition("-")[0] == "simulator"


async def stop_all(processes: Processes) -> None:
    """SIGTERM to the services, which drain their in-flight work through NATS, then to what they use
    (nats-server, the simulators); each process has STOP_TIMEOUT_S to stop, then is killed."""
    await stop({name: p for name, p in processes.items() if not infrastructure(name)})
    await stop({name: p for name, p in processes.items() if infrastructure(name)})


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


async def start_everything(settings: Settings, supervisor: Supervisor, replicas: dict[str, int]) -> None:
    env = dict(os.environ)
    identities = await start_nats_if_missing(settings, env, supervisor)
    if identities:
        settings = settings.model_copy(update={"nats_nkey_seed_file": str(seed_file(identities, "admin").resolve())})
    together = await start_simulator_if_no_key(settings, env, supervisor)  # starting while the rest is prepared
    kinds = await start_simulated_kinds(settings, env, supervisor)
    simulators = [*([together] if together else []), *kinds]
    applied = await apply_migrations(settings.database_url)
    log.info("migrations: %s", ", ".join(applied) if applied else "up to date")
    admin_key = await first_admin_key(settings.database_url)
    nc = await nats.connect(**nats_options(settings, "admin"))
    await ensure_streams(nc.jetstream(), settings.nats_stream_replicas)
    await nc.close()
    await simulators_answer(simulators)
    env.update(console_env(settings))
    services = await start_services(settings, env, supervisor, identities, replicas)
    config = GENERATED_CONFIG if kinds else None
    log.info("%s", summary(settings, services, simulators, identities, admin_key, config))


async def main(replicas: dict[str, int]) -> int:
    settings = Settings()
    configure_logging("run", settings.log_level, settings.log_format)
    supervisor = Supervisor()
    try:
        failure = await until_stopped_or_failed(supervisor, start_everything(settings, supervisor, replicas))
        if failure:
            log.error("stopping everything: %s", failure)
    finally:
        await supervisor.stop_all()
    if failure:
        log.error("stopped: %s", failure)
        return 1
    log.info("stopped")
    return 0


def check_config(path: Path | None) -> None:
    """The YAML file as `costwarden config check` sees it: its warnings printed, and nothing started
    when it has an error (each service would refuse to start on it, over and over)."""
    if path is None:
        return
    from services.config_check import check

    lines, errors = check(path)
    for line in lines:
        print(line, file=sys.stderr)
    if errors:
        raise SystemExit(f"not starting: {path} has {errors} error(s)")


def run(replicas: str | None = None) -> int:
    try:
        counts = parse_replicas(replicas)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    check_config(Settings().costwarden_config)
    RUN_DIR.mkdir(exist_ok=True)
    return asyncio.run(main(counts))
