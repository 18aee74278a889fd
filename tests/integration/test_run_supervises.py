"""`costwarden run` supervises: a process that dies is logged with how it died and started again on its
port while the others keep serving; one that keeps dying stops the run with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import auth, chat_body, new_key
from tests.integration.system import costwarden_run, probing, run_env
from tests.servers import port_open, s3_server
from tests.support.polling import wait_for

pytestmark = pytest.mark.system

REPLICATED = ("limiter", "cost", "notifier", "health", "backup", "console")
CALLERS = 4  # each with its own key, one call after another
LIMITER_REQUEST_TIMEOUT_S = 0.5  # the api's default wait for a limiter's answer
API_GONE = ("ConnectError", "ReadError", "RemoteProtocolError", "WriteError")  # no api process to answer


def run_messages(log: Path) -> list[str]:
    """What the runner itself logged, in order (a line still being written is skipped)."""
    messages = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "costwarden.run":
            messages.append(entry["msg"])
    return messages


def pids(log: Path, name: str) -> list[int]:
    """Every process `name` has been, in order."""
    return [int(m[1]) for m in (re.match(rf"started {re.escape(name)} \(pid (\d+)", msg) for msg in run_messages(log))
            if m]


def kill(log: Path, names: list[str]) -> float:
    """SIGKILL the processes `names` are now, together; when (monotonic clock)."""
    current = [pid for name in names for pid in pids(log, name)]
    assert len(current) == len(names), (names, current)
    killed_at = time.monotonic()
    for pid in current:
        os.kill(pid, signal.SIGKILL)
    return killed_at


def when_back(log: Path, back: dict[str, Callable[[], bool]], timeout_s: float) -> dict[str, float]:
    """When each killed process was seen answering again, started again by the run (monotonic clock): each
    timed on its own, every round checking all those not back yet."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < len(back):
        assert time.monotonic() < deadline, f"not back after {timeout_s}s: {sorted(set(back) - set(seen))}"
        for name, answering in back.items():
            if name not in seen and answering() and len(pids(log, name)) == 2:
                seen[name] = time.monotonic()
        time.sleep(0.05)
    return seen


def exits(log: Path) -> list[str]:
    return [msg for msg in run_messages(log) if " exited (" in msg]


def live(client: httpx.Client, port: int) -> bool:
    try:
        return client.get(f"http://127.0.0.1:{port}/health/live").status_code == 200
    except httpx.TransportError:
        return False


def outcome(answer: httpx.Response) -> str:
    """`200`, or the status with the error's code (`503 limiter_unavailable`), or with the start of the body."""
    if answer.status_code == 200:
        return "200"
    try:
        return f"{answer.status_code} {answer.json()['error']['code']}"
    except (ValueError, KeyError, TypeError):
        return f"{answer.status_code} {answer.text[:100]}"


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    outcome: str  # "200", "503 limiter_unavailable", another status and code, or the transport error's name
    retry_after: str | None = None

    def overlaps(self, start: float, end: float) -> bool:
        return self.started <= end and self.ended >= start


class Traffic:
    """Callers sending chat completions to the api, one after another, each on a new connection (no
    kept-alive connection outlives an api process), recording every call's outcome."""

    def __init__(self, api: str, keys: list[str]) -> None:
        self.api, self.keys = api, keys
        self.calls: list[Call] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.call, args=(key,), daemon=True) for key in keys]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def call(self, key: str) -> None:
        with httpx.Client(base_url=self.api, headers=auth(key), timeout=10,
                          limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    answer = client.post("/v1/chat/completions", json=chat_body())
                except httpx.TransportError as exc:
                    self.calls.append(Call(started, time.monotonic(), type(exc).__name__))
                else:
                    self.calls.append(Call(started, time.monotonic(), outcome(answer), answer.headers.get("retry-after")))
                self.stopping.wait(0.1)

    def answered(self) -> int:
        return sum(call.outcome == "200" for call in self.calls)


@pytest.fixture
def s3():
    server, env = s3_server("cw-supervised")
    yield env
    server.stop()


@pytest.mark.timeout(360)
def test_processes_killed_under_traffic_come_back_and_every_call_is_answered_or_refused_as_failing_closed(
        database_url, redis_url, s3, tmp_path):
    """SIGKILL one replica of each service (the limiter's, then the five others at once), then the api, then
    nats-server, while callers keep calling. LIMITER_FAILURE_MODE is "closed": a call whose limiter died
    under it waits out the api's limiter timeout and is refused with 503 limiter_unavailable and Retry-After,
    and so is every call made while no NATS carries the api's question to a limiter; the other limiter
    replica answers every call made after that. While the api itself is down, its port refuses connections
    (no process behind it) and calls in flight lose theirs."""
    keys = [asyncio.run(new_key(database_url, f"supervised-{os.getpid()}-{n}", "enterprise")) for n in range(CALLERS)]
    replicas = ",".join(f"{name}=2" for name in REPLICATED)
    with costwarden_run(database_url, redis_url, s3, tmp_path, "--replicas", replicas) as running, \
            probing(timeout_s=2) as probe:
        log, run = running["log"], running["run"]
        summary = next(msg for msg in run_messages(log) if msg.startswith("costwarden is up"))
        ports = {name: int(port) for name, port in re.findall(r"^\s+(\S+)\s+http://127\.0\.0\.1:(\d+)", summary, re.M)
                 if not name.startswith("simulator")}  # the simulated providers: run's infrastructure, not a service
        assert set(ports) == {"api", *REPLICATED, *(f"{name}-2" for name in REPLICATED)}
        back = {name: (lambda port=port: live(probe, port)) for name, port in ports.items()}
        back["nats-server"] = lambda: port_open(running["ports"]["NATS"])
        killed: dict[str, tuple[float, float]] = {}  # name -> (killed at, back at)
        with Traffic(running["url"]["api"], keys) as traffic:
            # A second replica of each service, the limiter's first and alone: one starting again already takes
            # its share of llm.request, and others starting beside it would slow its first answers past the
            # api's limiter timeout. Then the other five at once, then the api, then nats-server.
            for names in [["limiter-2"], [f"{service}-2" for service in REPLICATED if service != "limiter"], ["api"],
                          ["nats-server"]]:
                before = traffic.answered()
                wait_for(lambda before=before: traffic.answered() >= before + 2 * CALLERS, "calls answered", 30)
                killed_at = kill(log, names)
                for name, back_at in when_back(log, {name: back[name] for name in names}, 60).items():
                    killed[name] = (killed_at, back_at)
            after = traffic.answered()
            wait_for(lambda: traffic.answered() >= after + 2 * CALLERS, "calls answered after NATS's return", 30)
        assert run.poll() is None, "the run stopped"
        assert all(live(probe, port) for port in ports.values())
    assert running["returncode"] == 0

    for name in killed:
        said = [msg for msg in exits(log) if msg.startswith(f"{name} exited")]
        assert len(said) == 1 and re.fullmatch(
            rf"{re.escape(name)} exited \(killed by SIGKILL\) after [\d.]+s up; restarting it in 0\.5s", said[0]), said
    assert len(exits(log)) == len(killed), exits(log)  # nothing else exited, not even while stopping
    for name in [*ports, "nats-server"]:
        assert len(pids(log, name)) == (2 if name in killed else 1), name

    calls = traffic.calls
    limiter_killed_at = killed["limiter-2"][0]
    api_killed_at, api_back_at = killed["api"]
    nats_killed_at, nats_back_at = killed["nats-server"]
    answered_again_at = min(c.started for c in calls if c.outcome == "200" and c.started > nats_back_at)
    refused = [c for c in calls if c.outcome.startswith("503")]
    gone = [c for c in calls if c.outcome in API_GONE]
    assert {c.outcome for c in calls} <= {"200", "503 limiter_unavailable", *API_GONE}, \
        sorted({c.outcome for c in calls})
    assert all(c.retry_after is not None and int(c.retry_after) >= 1 for c in refused), refused
    # the calls in flight when a limiter replica died (at most one per caller), and those made while no
    # NATS carried the api's question to a limiter, are refused; no other
    in_flight = [c for c in refused if c.overlaps(limiter_killed_at, limiter_killed_at + LIMITER_REQUEST_TIMEOUT_S)]
    without_nats = [c for c in refused if c.overlaps(nats_killed_at, answered_again_at)]
    assert len(in_flight) <= CALLERS and without_nats
    assert [c for c in refused if c not in in_flight + without_nats] == [], (limiter_killed_at, nats_killed_at,
                                                                          answered_again_at, refused)
    # without an api process, calls fail to connect or lose their connection, and only then
    assert gone and all(c.overlaps(api_killed_at, api_back_at) for c in gone), (api_killed_at, api_back_at, gone)
    # every replica's work went on without it: calls were answered while it was down
    for service in REPLICATED:
        killed_at, back_at = killed[f"{service}-2"]
        assert any(c.outcome == "200" and killed_at < c.started and c.ended < back_at for c in calls), service


@pytest.mark.timeout(180)
def test_a_process_that_keeps_exiting_stops_the_run_with_the_reason(database_url, redis_url, tmp_path):
    """A console that cannot start (its session secret is too short) exits at once every time: after five
    exits within a minute the run says it is a crash loop, stops everything and exits non-zero."""
    env, ports = run_env(database_url, redis_url)
    env["CONSOLE_SESSION_SECRET"] = "too-short"
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        run = subprocess.Popen([sys.executable, "-m", "services.cli", "run"], env=env, cwd=tmp_path,
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = run.wait(150)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(60)
    messages = run_messages(log)
    assert code == 1, messages[-5:]
    assert [msg.partition(" after ")[0] for msg in exits(log)] == ["console exited (status 1)"] * 5
    assert [msg.rpartition("; ")[2] for msg in exits(log)] == [
        "restarting it in 0.5s", "restarting it in 1.0s", "restarting it in 2.0s", "restarting it in 4.0s",
        "not restarting it"]
    assert exits(log)[-1].endswith("s up: 5 exits within 60s, a crash loop; not restarting it")
    assert messages[-1] == "stopped: console is in a crash loop (5 exits within 60s; its lines above say why)"
    assert "CONSOLE_SESSION_SECRET must be at least 16 characters" in log.read_text()
    for port in ports.values():
        assert not port_open(port), f"port {port} still open after the run stopped"
