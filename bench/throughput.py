"""Gateway throughput under wrk: requests/s and CPU time per call, beside the same call made straight to
the upstream, through the bare relay (the floor: the same round trips on the same transport, none of
our code) and, when it is installed (bench/litellm/README.md), through a LiteLLM proxy.

CPU per call is read from /proc (user + system time of a process and its children, over the run,
divided by the calls wrk completed): far steadier on a shared machine than wall-clock latency. "own"
is the process under test; "path" adds what each call also wakes: for the gateway its limiter, NATS
and Redis, for the bare relay its echo and NATS (and Redis, for the relay whose echo runs the
limiter's script). The upstream's own CPU is in neither.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.gateway_stack import BODY, FLOORS, LABELS, GatewayStack, gateway_stack
from tests.servers import ProcessServer, free_port

CONNECTIONS = (16, 64)
DURATION_S = 8
LITELLM = Path(__file__).parent / "litellm"
TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = task / "children"
            if children.exists():
                todo.extend(int(child) for child in children.read_text().split())
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for tree_pid in process_tree(pid):
            try:
                fields = Path(f"/proc/{tree_pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


@dataclass
class Run:
    rate: float
    own_ms: float
    path_ms: float
    errors: int


def wrk(url: str, headers: dict[str, str], connections: int, own: list[int], path: list[int]) -> Run:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(BODY))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    own_before, path_before = cpu_seconds(own), cpu_seconds(path)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{DURATION_S}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    own_used, path_used = cpu_seconds(own) - own_before, cpu_seconds(path) - path_before
    script.unlink()
    calls = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                                            out)[0]) if "Socket errors" in out else 0
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return Run(rate, own_used * 1000 / max(calls, 1), path_used * 1000 / max(calls, 1), errors)


LITELLM_KEY = "sk-costwarden-bench-0123456789abcdef"


def litellm_proxy(upstream_url: str) -> ProcessServer | None:
    binary = LITELLM / ".venv" / "bin" / "litellm"
    if not binary.exists():
        return None
    port = free_port()
    config = Path(tempfile.mkstemp(suffix=".yaml")[1])
    config.write_text(json.dumps({
        "model_list": [{"model_name": BODY["model"], "litellm_params": {
            "model": f"openai/{BODY['model']}", "api_base": upstream_url, "api_key": "bench"}}],
        "litellm_settings": {"telemetry": False},
    }))
    # no database; a master key (callers authenticate, as at the gateway); the package's own price map
    os.environ.update({"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                       "LITELLM_MASTER_KEY": LITELLM_KEY})
    server = ProcessServer("litellm", [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port",
                                       str(port), "--num_workers", "1"], port)
    server.start(timeout_s=90)
    return server


async def bench_throughput(env: dict[str, str], database_url: str, lines: list[str],
                           nats_srv: ProcessServer, redis_srv: ProcessServer) -> None:
    if shutil.which("wrk") is None:
        lines.append("throughput: skipped, wrk is not installed (apt-get install wrk)")
        return
    async with gateway_stack(env, database_url) as stack:
        results = run_all(stack, nats_srv, redis_srv)
    lines += report(results)


def run_all(stack: GatewayStack, nats_srv: ProcessServer, redis_srv: ProcessServer) -> dict[str, dict[int, Run]]:
    nats_pid, redis_pid = nats_srv.process.pid, redis_srv.process.pid
    upstream, echo, limiter = (stack.upstream.process.pid, stack.nats_echo.process.pid,
                               stack.limiter.process.pid)
    floor = {name: process.process.pid for name, process in stack.floors.items()}
    # what a floor asks -> the processes its question wakes
    answered_by = {"echo": [echo, nats_pid], "redis": [echo, nats_pid, redis_pid],
                   "limiter": [limiter, nats_pid, redis_pid]}
    # name -> (the process under test, every process each call wakes)
    measured = {"direct": ([upstream], [upstream]),
                **{name: ([pid], [pid, *answered_by[FLOORS[name][1]]]) for name, pid in floor.items()},
                "gateway": ([stack.api.process.pid], [stack.api.process.pid, limiter, nats_pid, redis_pid])}
    targets = stack.targets()
    litellm = litellm_proxy(f"{stack.upstream.url}/v1")
    if litellm:
        targets["litellm"] = (f"http://127.0.0.1:{litellm.port}/v1/chat/completions",
                              {"Authorization": f"Bearer {LITELLM_KEY}"})
        measured["litellm"] = ([litellm.process.pid], [litellm.process.pid])
    try:
        results: dict[str, dict[int, Run]] = {name: {} for name in targets}
        for url, headers in targets.values():  # warm-up: connection pools, caches, lazy imports
            wrk_warmup(url, headers)
        for connections in CONNECTIONS:
            for name, (url, headers) in targets.items():
                own, path = measured[name]
                results[name][connections] = wrk(url, headers, connections, own, path)
    finally:
        if litellm:
            litellm.stop()
    return results


def wrk_warmup(url: str, headers: dict[str, str]) -> None:
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    subprocess.run(["wrk", "-t1", "-c4", "-d2s", *header_args, url], capture_output=True, check=False)


def report(results: dict[str, dict[int, Run]]) -> list[str]:
    lines = [f"throughput (wrk, 1 thread, {DURATION_S} s a run; CPU ms per call from /proc: own process / whole"
             " path):"]
    header = "".join(f"  {c:>3} conn: req/s   own   path" for c in CONNECTIONS)
    lines.append(f"  {'':26}{header}")
    for name, runs in results.items():
        cells = "".join(f"  {runs[c].rate:14.0f} {runs[c].own_ms:5.2f} {runs[c].path_ms:6.2f}" for c in CONNECTIONS)
        errors = sum(run.errors for run in runs.values())
        lines.append(f"  {LABELS[name]:26}{cells}" + (f"   ({errors} errors)" if errors else ""))
    for c in CONNECTIONS:
        rate = {name: runs[c].rate for name, runs in results.items()}
        ratio = (f"  at {c} connections: gateway req/s {rate['gateway'] / rate['bare']:.2f}x the bare relay's"
                 f" ({rate['gateway'] / rate['fastapi']:.2f}x the FastAPI relay with the limiter's)")
        if "litellm" in results:
            ratio += f", {rate['gateway'] / rate['litellm']:.1f}x LiteLLM's"
        lines.append(ratio)
        lines.append(f"    floors: relay + Redis decision {rate['redis'] / rate['bare']:.2f}x the bare relay's req/s,"
                     f" + limiter {rate['limiter'] / rate['bare']:.2f}x, with FastAPI {rate['fastapi'] / rate['bare']:.2f}x")
    if "litellm" not in results:
        lines.append("  LiteLLM: not installed (bench/litellm/README.md says how)")
    return lines

