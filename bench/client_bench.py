"""The client's own overhead (`python -m bench client`): guarded calls through costwarden-client
(`async with guard.call(...)` asking `llm.request`, `call.record(...)` publishing `llm.completed` and
waiting for its ack) beside raw nats-py sending the same two messages, built as plain dicts, on the
same connection, to the same limiter and stream. Sequential calls in interleaved rounds; wall time per
call (p50) and this process's CPU per call, each as a ratio to raw nats-py's."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable

from costwarden_client import Guard, Usage

from tests.servers import ServiceProcess, free_port

MODEL = "meta-llama/Llama-3-8b-chat-hf"
ROUNDS, CALLS = 5, 400


async def raw_call(guard: Guard, user: str) -> None:
    request_id = uuid.uuid4().hex
    question = {"request_id": request_id, "user_id": user, "tier": "enterprise", "model": MODEL,
                "prompt_tokens_estimate": 40, "max_tokens": 20}
    reply = await guard.nc.request("llm.request", json.dumps(question).encode(), timeout=5)
    if not json.loads(reply.data)["allowed"]:
        raise RuntimeError("denied")
    completed = {"id": request_id, "request_id": request_id, "user_id": user, "tier": "enterprise",
                 "provider": "together_ai", "model": MODEL, "prompt_tokens": 40, "completion_tokens": 20,
                 "endpoint": "/v1/chat/completions", "success": True, "latency_ms": 1}
    await guard.js.publish("llm.completed", json.dumps(completed).encode(), timeout=5,
                           headers={"Nats-Msg-Id": request_id})


async def guarded_call(guard: Guard, user: str) -> None:
    async with guard.call(user_id=user, tier="enterprise", model=MODEL, provider="together_ai", max_tokens=20,
                          prompt_tokens=40) as call:
        await call.record(Usage(40, 20))


async def timed(call: Callable[[Guard, str], Awaitable[None]], guard: Guard, n: int) -> tuple[list[float], float]:
    """(wall ms of each call, CPU ms of this process per call)."""
    walls = []
    cpu = time.process_time()
    for i in range(n):
        started = time.perf_counter()
        await call(guard, f"bench-client-{i % 100}")
        walls.append((time.perf_counter() - started) * 1000)
    return walls, (time.process_time() - cpu) * 1000 / n


def p50(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def bench_client(env: dict[str, str], lines: list[str]) -> None:
    port = free_port()
    limiter = ServiceProcess("limiter", {**env, "LIMITER_PORT": str(port)}, port).start()
    try:
        async with await Guard.connect(env["NATS_URL"]) as guard:
            calls = {"raw nats-py": raw_call, "costwarden-client": guarded_call}
            for call in calls.values():
                await timed(call, guard, 200)  # warm-up: connections, subscriptions, caches
            walls: dict[str, list[float]] = {name: [] for name in calls}
            cpus: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(ROUNDS):
                for name, call in calls.items():
                    wall, cpu = await timed(call, guard, CALLS)
                    walls[name] += wall
                    cpus[name].append(cpu)
    finally:
        limiter.stop()
    raw_wall, raw_cpu = p50(walls["raw nats-py"]), p50(cpus["raw nats-py"])
    lines += [f"client ({ROUNDS * CALLS} sequential calls each: llm.request, then llm.completed acked, to the real"
              " limiter; CPU is this process's):",
              f"  {'':20}   p50 wall    CPU/call   wall ratio   CPU ratio"]
    for name in calls:
        wall, cpu = p50(walls[name]), p50(cpus[name])
        lines.append(f"  {name:20} {wall:7.3f} ms {cpu:8.3f} ms {wall / raw_wall:9.2f}x {cpu / raw_cpu:10.2f}x")
    lines.append(f"  the client's own overhead: {(p50(walls['costwarden-client']) - raw_wall) * 1000:.0f} µs wall, "
                 f"{(p50(cpus['costwarden-client']) - raw_cpu) * 1000:.0f} µs CPU per call")
