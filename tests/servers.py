"""Real servers for the tests: private nats-server and redis-server processes on free ports, a fresh
Postgres database, service processes started the way `make run` starts them, and in-thread HTTP
servers (the LLM simulator, webhook sinks)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import httpx
import uvicorn

from services.devrun import LISTEN_PORTS_FROM, bindable, ephemeral_ports_start, free_port
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.prefix) / "bin"


def free_port_pair(offset: int) -> int:
    """A free port whose `port + offset` is free too, both below the kernel's range for outgoing
    connections (Redis Cluster's bus port is the port + 10000)."""
    while True:
        port = random.randint(LISTEN_PORTS_FROM, ephemeral_ports_start() - 1 - offset)
        if all(bindable(p) for p in (port, port + offset)):
            return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ProcessServer:
    """A server binary on a fixed free port that a test may stop and start again (fault tests)."""

    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.process: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)

    def start(self, timeout_s: float = 20.0) -> None:
        self.process = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), self.name, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the server has no chance to hand anything over."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        wait_for(lambda: not port_open(self.port), f"{self.name} to stop")


def create_streams(urls: str | list[str], replicas: int = 1) -> None:
    """What `costwarden migrate` does on the bus: services only bind to existing streams. Runs on a
    thread of its own, so that sync and async tests alike can call it."""
    from concurrent.futures import ThreadPoolExecutor

    import nats

    from shared.subjects import ensure_streams

    async def create() -> None:
        nc = await nats.connect(servers=urls if isinstance(urls, list) else [urls])
        try:
            await ensure_streams(nc.jetstream(), replicas)
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, create()).result()


def nats_server() -> tuple[ProcessServer, str]:
    binary = VENV_BIN / "nats-server"
    port = free_port()
    store = tempfile.mkdtemp(prefix="nats-js-")
    server = ProcessServer("nats", [str(binary if binary.exists() else "nats-server"), "-js", "-a", "127.0.0.1",
                                    "-p", str(port), "-sd", store], port)
    server.start()
    create_streams(f"nats://127.0.0.1:{port}")
    return server, f"nats://127.0.0.1:{port}"


def nats_cluster(size: int = 3) -> tuple[list[ProcessServer], list[str]]:
    """`size` JetStream nodes on loopback with cluster routes between them (an R3 stream answers once
    they have met). Each node may be stopped, killed and started again, keeping its store."""
    binary = VENV_BIN / "nats-server"
    ports = [(free_port(), free_port()) for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{cluster}" for _, cluster in ports)
    nodes = []
    for i, (client, cluster) in enumerate(ports):
        store = tempfile.mkdtemp(prefix=f"nats-n{i}-")
        nodes.append(ProcessServer(f"nats-n{i}", [
            str(binary if binary.exists() else "nats-server"), "-js", "-a", "127.0.0.1", "-p", str(client),
            "-sd", store, "--server_name", f"n{i}", "--cluster_name", "costwarden",
            "--cluster", f"nats://127.0.0.1:{cluster}", "--routes", routes], client))
    for node in nodes:
        node.process = subprocess.Popen(node.argv, stdout=node.log, stderr=subprocess.STDOUT)
    for node in nodes:
        wait_for(lambda node=node: port_open(node.port), node.name)
    urls = [f"nats://127.0.0.1:{client}" for client, _ in ports]
    create_streams(urls, replicas=size)  # waits (ensure_streams' patience) for the nodes to elect a leader
    return nodes, urls


def redis_cluster() -> tuple[list[ProcessServer], str]:
    """Six `redis-server --cluster-enabled yes` on loopback made one Redis Cluster of three masters, each
    with a replica (`redis-cli --cluster create`); (nodes, the URL of a seed node)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("no redis-server on this machine")
    data = tempfile.mkdtemp(prefix="redis-cluster-")
    nodes = []
    for _ in range(6):
        port = free_port_pair(10_000)
        node = ProcessServer(f"redis-{port}", [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000", "--save", "",
            "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", data], port)
        node.start()
        nodes.append(node)
    subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{node.port}" for node in nodes), "--cluster-replicas", "1", "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)

    def answer(node: ProcessServer, *command: str) -> bytes:
        return subprocess.run(["redis-cli", "-p", str(node.port), *command], capture_output=True).stdout

    def cluster_ok() -> bool:
        """Every node sees the slots covered and every replica has synced with its master: a replica
        that never synced refuses to take over from a failed master (cluster-replica-validity-factor)."""
        return all(b"cluster_state:ok" in answer(node, "cluster", "info") for node in nodes) and all(
            b"master_link_status:up" in info for info in (answer(node, "info", "replication") for node in nodes)
            if b"role:slave" in info)

    wait_for(cluster_ok, "redis cluster", 30)
    return nodes, f"redis://127.0.0.1:{nodes[0].port}/0"


def redis_server() -> tuple[ProcessServer, str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    server = ProcessServer("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], port)
    server.start()
    return server, f"redis://127.0.0.1:{port}/0"


class ServiceProcess:
    """One costwarden service run as `python -m services.<name>`, as make run does."""

    def __init__(self, name: str, env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"svc-{name}-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

        # One client for every try: httpx.get would build a TLS context each time (~25 ms of CPU, taken
        # from the processes starting).
        with httpx.Client(timeout=0.5) as client:
            def live() -> bool:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()[-3000:]}")
                try:
                    return client.get(f"{self.url}/health/live").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(live, self.name, timeout_s)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text()


def start_all(services: Iterable[ServiceProcess]) -> list[ServiceProcess]:
    """Start several at once, each waited on until it is live: their start-ups overlap. If one fails, the
    others are stopped before the error is raised."""
    services = list(services)
    patience_s = 30.0 * max(1.0, len(services) / 2)  # their start-ups share the machine's cores
    with ThreadPoolExecutor(len(services)) as pool:
        starts = [pool.submit(service.start, patience_s) for service in services]
    failures = [start.exception() for start in starts if start.exception() is not None]
    if failures:
        stop_all(services)
        raise failures[0]  # type: ignore[misc]
    return services


class Stoppable(Protocol):
    def stop(self) -> object: ...


def stop_all(processes: Iterable[Stoppable]) -> None:
    """Stop several at once (services, servers): each shuts down gracefully on its own, side by side."""
    processes = list(processes)
    if processes:
        with ThreadPoolExecutor(len(processes)) as pool:
            for stopped in [pool.submit(process.stop) for process in processes]:
                stopped.result()


class ThreadedHttpServer:
    """An ASGI app served by uvicorn on a free loopback port in a background thread."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", access_log=False, timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedHttpServer:
        self.thread.start()
        wait_for(lambda: self.server.started, "http server")
        return self

    def stop(self) -> None:
        """At once: a request still in progress (a slow answer the test asked for) is cut off."""
        self.server.should_exit = self.server.force_exit = True
        self.thread.join(10)


def postgres_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) if Path("/usr/lib/postgresql").exists() else []
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer(ProcessServer):
    """A private PostgreSQL cluster (initdb in a temp dir) that a test may stop and start again."""

    def __init__(self) -> None:
        bindir = postgres_binaries()
        if bindir is None:
            raise FileNotFoundError("no initdb on this machine")
        self.user = "postgres" if os.geteuid() == 0 else None
        data = Path(tempfile.mkdtemp(prefix="pg-data-"))
        socket_dir = Path(tempfile.mkdtemp(prefix="pg-sock-"))
        if self.user:
            shutil.chown(data, self.user)
            shutil.chown(socket_dir, self.user)
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, user=self.user)
        port = free_port()
        self.bindir = bindir
        super().__init__("postgres", [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                                      "-c", "listen_addresses=127.0.0.1", "-k", str(socket_dir),
                                      "-c", "fsync=off"], port)
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def start(self) -> None:
        """Returns once connections are accepted: PostgreSQL opens its port while it is still starting up."""
        self.process = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, user=self.user)
        pg_isready = [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        wait_for(lambda: subprocess.run(pg_isready).returncode == 0, self.name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): connected clients are cut off, as in an outage."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(30)
        wait_for(lambda: not port_open(self.port), f"{self.name} to stop")


def s3_server(bucket: str) -> tuple[object, dict[str, str]]:
    """An S3-compatible server (moto) on loopback with `bucket` created; (server, the env pointing at it)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "S3_BACKUP_BUCKET": bucket}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return server, env
