"""CPU per call as instructions, counted by callgrind: the same figure on a fast day and a slow one.

Wall-clock CPU time per call on a shared two-core virtual machine moves with the machine (it doubled
from one day to the next here); callgrind counts the instructions a process executes, which do not.
Each process under test runs under valgrind twice, answering N_SHORT and then N_LONG sequential calls
after the same warm-up, with everything it calls (upstream, NATS, limiter, Redis) running natively;
the difference over N_LONG - N_SHORT calls is its instructions per call, startup and shutdown cancelled
out. The gateway's own process is set beside the bare relay's and the FastAPI relay's with the limiter.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.gateway_stack import BODY, LABELS, GatewayStack, floor_command
from tests.servers import ROOT, free_port, port_open
from tests.support.polling import wait_for

WARMUP, N_SHORT, N_LONG = 20, 50, 300
TARGETS = ("bare", "fastapi", "gateway")


def under_callgrind(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The process as every bench process runs, environment included, under callgrind."""
    with log.open("w") as log_file:
        return subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={log.with_suffix('.out')}",
                                 sys.executable, *args], env={**os.environ, **env}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=log_file)


async def instructions_of_run(stack: GatewayStack, name: str, calls: int) -> int:
    """Instructions the process executed, from its start to its exit, having answered WARMUP + calls."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    if name == "gateway":
        args, env = ["-m", "services.api"], {**stack.env, "API_PORT": str(port)}
        headers = {"Authorization": f"Bearer {stack.key}"}
    else:
        (args, env), headers = floor_command(name, port, stack.env), {}
    log = Path(tempfile.mkstemp(suffix=".callgrind.log")[1])
    process = under_callgrind(args, env, log)
    try:
        wait_for(lambda: port_open(port), f"{name} under valgrind", 600)
        async with httpx.AsyncClient(timeout=120) as client:
            for _ in range(WARMUP + calls):
                (await client.post(url, json=BODY, headers=headers)).raise_for_status()
    finally:
        process.terminate()
        process.wait(300)
    collected = re.search(r"Collected : (\d+)", log.read_text())
    log.unlink()
    log.with_suffix(".out").unlink(missing_ok=True)
    if collected is None:
        raise RuntimeError(f"callgrind gave no count for {name}")
    return int(collected.group(1))


async def bench_instructions(stack: GatewayStack, lines: list[str]) -> None:
    if shutil.which("valgrind") is None:
        lines.append("instructions per call: skipped, valgrind is not installed (apt-get install valgrind)")
        return
    per_call = {}
    for name in TARGETS:
        short = await instructions_of_run(stack, name, N_SHORT)
        long = await instructions_of_run(stack, name, N_LONG)
        per_call[name] = (long - short) / (N_LONG - N_SHORT)
    lines.append(f"instructions per call of the process under test (callgrind, {N_LONG} minus {N_SHORT} sequential"
                 " calls):")
    for name in TARGETS:
        lines.append(f"  {LABELS[name]:26}{per_call[name] / 1e6:6.2f} M   {per_call[name] / per_call['bare']:5.2f}x"
                     " the bare relay's")
    lines.append(f"  gateway above the FastAPI relay with the limiter: {(per_call['gateway'] - per_call['fastapi']) / 1e6:.2f} M"
                 f" ({per_call['gateway'] / per_call['fastapi']:.2f}x)")
