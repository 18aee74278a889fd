"""`make run`'s supervisor: starts NATS and the simulator when missing, runs every service, and stops
them all on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import httpx
import pytest

from tests.servers import free_port, port_open, redis_server, wait_for

pytestmark = pytest.mark.integration


def test_run_starts_everything_and_ctrl_c_stops_everything(database_url, tmp_path):
    redis_srv, redis_url = redis_server()  # a fresh one: other tests spend 127.0.0.1's anonymous quota
    ports = {name: free_port() for name in ("NATS", "API_PORT", "LIMITER_PORT", "COST_PORT", "NOTIFIER_PORT",
                                            "HEALTH_PORT", "SIMULATOR_PORT")}
    env = {k: v for k, v in os.environ.items() if k not in ("TOGETHER_API_KEY", "OPENAI_API_KEY")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, NATS_URL=f"nats://127.0.0.1:{ports['NATS']}",
               API_PORT=str(ports["API_PORT"]), LIMITER_PORT=str(ports["LIMITER_PORT"]), COST_PORT=str(ports["COST_PORT"]),
               NOTIFIER_PORT=str(ports["NOTIFIER_PORT"]), HEALTH_PORT=str(ports["HEALTH_PORT"]),
               SIMULATOR_PORT=str(ports["SIMULATOR_PORT"]))
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
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(60)
        redis_srv.stop()
    output = open(log.name).read()
    assert code == 0, output[-3000:]
    assert "starting nats-server with JetStream" in output
    assert "no TOGETHER_API_KEY set: the gateway calls the local LLM simulator" in output
    for port in ports.values():
        assert not port_open(port), f"port {port} still open after Ctrl-C"
