"""`make run`'s supervisor: starts NATS and the simulator when missing, runs every service, and stops
them all on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal

import asyncpg
import httpx
import pytest

from tests.integration.system import run_env
from tests.servers import port_open, redis_server
from tests.support.polling import wait_for

pytestmark = pytest.mark.system


FASTSTREAM_PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")  # FastStream's own format
READABLE_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3} (api|limiter|cost|notifier|health|console|run)\s+(DEBUG|INFO|WARNING|ERROR) ")


def console_spend_today(console: str, key: str) -> Decimal:
    with httpx.Client(base_url=console, timeout=10) as browser:
        csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/signin").text)
        assert csrf is not None
        assert browser.post("/signin", data={"key": key, "csrf": csrf[1], "next": "/"}).status_code == 303
        day = re.search(r'data-period="day">.*?data-value="([^"]+)"', browser.get("/").text, re.S)
        assert day is not None
        return Decimal(day[1])


def ledger_row(database_url: str, request_id: str) -> dict | None:
    async def read() -> dict | None:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow("SELECT provider, model, served_model, priced, cost FROM llm_usage "
                                      "WHERE request_id = $1", request_id)
        finally:
            await conn.close()
        return dict(row) if row else None

    return asyncio.run(read())


def called_and_recorded(api: str, key: str, database_url: str, model: str) -> tuple[httpx.Response, dict]:
    """A chat call to `model` through the gateway, and its ledger row once the cost service has it."""
    answer = httpx.post(f"{api}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                        json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["X-Request-Id"]
    wait_for(lambda: ledger_row(database_url, request_id), f"the ledger row of {model}", 30)
    return answer, ledger_row(database_url, request_id) or {}


def test_run_starts_everything_and_ctrl_c_stops_everything(fresh_database, tmp_path):
    """A new installation: make run starts everything, and the first call's spend is in the console,
    signed in with the admin key that make run made, within a minute; a model of each kind of provider
    (Together.ai, Anthropic, Azure OpenAI, all on the simulator) is answered, recorded and priced, and
    the health service watches each."""
    redis_srv, redis_url = redis_server()  # a fresh one: other tests spend 127.0.0.1's anonymous quota
    env, ports = run_env(fresh_database, redis_url)
    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)
    run = subprocess.Popen([sys.executable, "-m", "services.cli", "run"], env=env, cwd=tmp_path,
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "costwarden is up" in open(log.name).read(), "make run", 60)
        response = httpx.post(f"http://127.0.0.1:{ports['API_PORT']}/api/agent/query", json={"query": "hello"},
                              headers={"X-Forwarded-For": "192.0.2.200"}, timeout=10)
        assert response.status_code == 200
        assert response.json()["provider"] == "together_ai"
        assert response.json()["response"].startswith("This is a simulated answer")
        started = time.monotonic()
        admin_key = (tmp_path / ".run" / "admin-key").read_text().strip()
        console = f"http://127.0.0.1:{ports['CONSOLE_PORT']}"
        wait_for(lambda: console_spend_today(console, admin_key) > 0, "the first spend in the console", 60)
        assert time.monotonic() - started < 60
        api = f"http://127.0.0.1:{ports['API_PORT']}"
        for model, provider, served_model in [("meta-llama/Llama-3-8b-chat-hf", "together_ai",
                                               "meta-llama/Llama-3-8b-chat-hf"),
                                              ("claude-sonnet-4", "anthropic", "claude-sonnet-4-20250514"),
                                              ("gpt-4o-azure", "azure", "gpt-4o")]:
            answer, row = called_and_recorded(api, admin_key, fresh_database, model)
            assert answer.headers["X-Costwarden-Provider"] == provider
            assert answer.json()["choices"][0]["message"]["content"].startswith("This is a simulated")
            assert (row["provider"], row["model"], row["served_model"], row["priced"]) == (provider, model,
                                                                                         served_model, True)
            assert row["cost"] > 0
        health = f"http://127.0.0.1:{ports['HEALTH_PORT']}/health/dependencies"
        wait_for(lambda: {name: entry["status"] for name, entry in httpx.get(health, timeout=5).json()[
            "dependencies"].items() if name in ("togetherAI", "anthropic", "azure")} == dict.fromkeys(
            ("togetherAI", "anthropic", "azure"), "healthy"), "every provider healthy", 30)
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(60)
        redis_srv.stop()
    output = open(log.name).read()
    assert code == 0, output[-3000:]
    assert "starting nats-server with JetStream" in output
    assert "no TOGETHER_API_KEY set: the gateway calls the local LLM simulator" in output
    services = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert {entry["service"] for entry in services} >= {"api", "limiter", "cost", "notifier", "health", "console",
                                                        "run"}
    assert "created a first admin key" in output and admin_key not in output  # the key is in its file only
    assert any("FastStream app started" in entry["msg"] for entry in services)  # not a line of its own format
    assert not [line for line in output.splitlines() if FASTSTREAM_PLAIN_LINE.match(line)]
    # the services stop before NATS: each drains through a live connection
    assert not [e for e in services if e["level"] == "error"], [e["msg"][:200] for e in services if e["level"] == "error"]
    for port in ports.values():
        assert not port_open(port), f"port {port} still open after Ctrl-C"


@pytest.fixture(scope="module")
def in_a_terminal(database_url, tmp_path_factory):
    """`make run REPLICAS=limiter=2,cost=2` in a terminal (a pty), as a developer runs it: the replicas test
    uses it, then the terminal test stops it with Ctrl-C and reads everything it wrote."""
    redis_srv, redis_url = redis_server()
    env, ports = run_env(database_url, redis_url)
    env["TRUSTED_PROXIES"] = "127.0.0.1/32"  # each request its own anonymous caller (X-Forwarded-For)
    controller, terminal = pty.openpty()
    run = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "--replicas", "limiter=2,cost=2"], env=env,
                           cwd=tmp_path_factory.mktemp("terminal-run"), stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the last process holding the terminal exited
                return
            if not chunk:
                return
            output.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"Ctrl-C stops everything" in output, "make run", 90)
        yield {"run": run, "ports": ports, "output": output, "reader": reader}
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(60)
        reader.join(5)
        os.close(controller)
        redis_srv.stop()


def test_run_with_replicas_starts_each_replica_on_its_own_port_sharing_the_work(in_a_terminal):
    ports = in_a_terminal["ports"]
    summary = in_a_terminal["output"].decode(errors="replace")
    replicas = {name: int(port) for name, port in re.findall(r"(limiter-2|cost-2)\s+http://[\d.]+:(\d+)", summary)}
    assert set(replicas) == {"limiter-2", "cost-2"}
    limiters = [ports["LIMITER_PORT"], replicas["limiter-2"]]
    with httpx.Client(timeout=10) as client:
        for port in [*limiters, ports["COST_PORT"], replicas["cost-2"]]:
            assert client.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200
        for i in range(40):  # the limiter replicas share llm.request through their queue group
            answer = client.post(f"http://127.0.0.1:{ports['API_PORT']}/api/agent/query", json={"query": "hi"},
                                 headers={"X-Forwarded-For": f"192.0.2.{10 + i}"})
            assert answer.status_code == 200, answer.text

        def answered(port: int) -> float:
            metrics = client.get(f"http://127.0.0.1:{port}/metrics").text
            return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("costwarden_requests_handled_seconds_count") and "llm.request" in line)

        shares = [answered(port) for port in limiters]
    assert sum(shares) == 40 and min(shares) > 0, shares


def test_in_a_terminal_every_line_is_readable_and_a_summary_says_where_things_are(in_a_terminal):
    """`make run` in a terminal: one readable line per event from every service, FastStream's included;
    Ctrl-C stops it."""
    run, ports, output = in_a_terminal["run"], in_a_terminal["ports"], in_a_terminal["output"]
    try:
        wait_for(lambda: b"FastStream app started" in output, "FastStream's start-up line", 10)
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(60)
        in_a_terminal["reader"].join(5)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    assert code == 0, text[-3000:]
    ours = [line for line in text.splitlines() if READABLE_LINE.match(line)]
    assert {READABLE_LINE.match(line)[1] for line in ours} == {"api", "limiter", "cost", "notifier", "health",
                                                               "console", "run"}
    assert not [line for line in text.splitlines() if line.startswith('{"ts"') or FASTSTREAM_PLAIN_LINE.match(line)]
    assert any("FastStream app started" in line for line in ours)
    summary = text[text.index("costwarden is up:"):]
    assert f"http://127.0.0.1:{ports['API_PORT']}" in summary and f"http://127.0.0.1:{ports['HEALTH_PORT']}" in summary
    assert f"http://127.0.0.1:{ports['SIMULATOR_PORT']}/v1" in summary and "keys create --user" in summary
    assert f"http://127.0.0.1:{ports['CONSOLE_PORT']}" in summary
    assert re.search(r"simulator-anthropic +http://127\.0\.0\.1:\d+ +plays Anthropic: provider anthropic, "
                     r"model claude-sonnet-4", summary)
    assert re.search(r"simulator-azure +http://127\.0\.0\.1:\d+ +plays Azure OpenAI: provider azure, "
                     r"model gpt-4o-azure", summary)
    assert re.search(r"config +\.run/costwarden\.yaml", summary)
