"""`make bench`: measure the gateway, the limiter and the cost ledger against baselines measured in the
same run (`python -m bench ledger` runs one part only).

1. Gateway: latency p50/p99 and requests/s of calls through the gateway (limiter and llm.completed
   publishing on) beside the same calls made straight to the same local upstream, and beside the
   relays that make the same three round trips with no code of ours (bench/bare_gateway.py): the bare
   relay (its question answered by an echo), the floor that this machine puts under any gateway built
   this way; the same with its question answered after one run of the limiter's script on Redis; the
   same asking the real limiter; and that as a FastAPI route.
2. Throughput (bench/throughput.py): requests/s and CPU per call under wrk at 16 and 64 connections,
   for the same targets and, when installed, a LiteLLM proxy on the same upstream.
   Instructions (bench/instructions.py): the CPU per call of the gateway's process and of the relays'
   as instructions counted by callgrind, which the machine's speed of the day does not move.
3. Limiter: decisions/s of `llm.request` beside a bare FastStream echo handler and a bare nats-py echo
   on the same NATS; p50/p99 under open-loop load beside the nats-py echo at the same rate; and one
   round trip back to back beside one after the machine was idle, which is what each hop of a
   sequential gateway call pays.
4. Cost ledger: llm.completed events/s from JetStream into Postgres (ledger rows, rollups, threshold
   checks) for one cost process, beside nats-py's raw pull-consume-and-ack rate on the same stream.
5. Console: each page's latency on a month of 1 M ledger rows beside the console's bare round trip
   and the raw-ledger query that the rollups replace (bench/console_bench.py).
6. Backup: the streamed backup of a 500 MB database beside `pg_dump | gzip` (bench/backup_bench.py).
7. Client: costwarden-client's own overhead per guarded call beside raw nats-py sending the same two
   messages to the same limiter (bench/client_bench.py).

Everything runs on loopback: private nats-server and redis-server, a scratch Postgres database, the
LLM simulator as the upstream. Results are printed and written to bench/results/latest.txt.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import nats

from bench.gateway_stack import BODY, LABELS, gateway_stack, start_script
from services.deploy.migrate import apply_migrations
from shared.events import LimitRequest, LlmCompleted
from shared.subjects import ensure_streams
from tests.servers import ServiceProcess, free_port, nats_server, redis_server

RESULTS = Path(__file__).parent / "results"
BENCH_CONFIG = """
tiers:
  anonymous: {requests: 1000000000, strict_requests: 1000000, tokens_per_minute: 1000000000000, daily_budget_usd: "1000000"}
  free: {requests: 1000000000, strict_requests: 1000000, tokens_per_minute: 1000000000000, daily_budget_usd: "1000000"}
  pro: {requests: 1000000000, strict_requests: 1000000, tokens_per_minute: 1000000000000, daily_budget_usd: "1000000"}
  enterprise: {requests: 1000000000, strict_requests: 1000000, tokens_per_minute: 1000000000000, daily_budget_usd: "1000000"}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sequential_latencies(client: httpx.AsyncClient, url: str, headers: dict, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.post(url, json=BODY, headers=headers)
        out.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return out


# Below uvicorn's 5 s keep-alive timeout: a pooled connection reused just as the server closes it
# would fail the run with a ReadError.
KEEPALIVE_EXPIRY_S = 2.0


async def throughput(url: str, headers: dict, total: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                (await client.post(url, json=BODY, headers=headers)).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def bench_gateway(env: dict[str, str], database_url: str, lines: list[str]) -> None:
    async with gateway_stack(env, database_url) as stack:
        targets = stack.targets()
        latencies: dict[str, list[float]] = {name: [] for name in targets}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)) as client:
            for url, headers in targets.values():
                await sequential_latencies(client, url, headers, 200)
            for _ in range(5):  # interleaved rounds, so drift hits every target alike
                for name, (url, headers) in targets.items():
                    latencies[name] += await sequential_latencies(client, url, headers, 300)
        rates = {name: await throughput(url, headers, 3000, 32) for name, (url, headers) in targets.items()}
    p50 = {name: pct(values, .5) for name, values in latencies.items()}
    p99 = {name: pct(values, .99) for name, values in latencies.items()}
    added = {name: p50[name] - p50["direct"] for name in targets}
    lines += [
        "gateway (1500 sequential calls each, then 3000 calls at concurrency 32; added = p50 above the direct"
        " call's):",
        f"  {'':26}      p50      p99     req/s   added p50   added / bare relay's",
        *(f"  {LABELS[name]:26}{p50[name]:6.2f} ms{p99[name]:6.2f} ms{rates[name]:8.0f}"
          + ("" if name == "direct" else f"{added[name]:9.2f} ms{added[name] / added['bare']:12.2f}x")
          for name in targets),
    ]


async def closed_loop(nc, subject: str, payloads: list[bytes], concurrency: int) -> float:
    queue = iter(payloads)

    async def worker() -> None:
        for payload in queue:
            await nc.request(subject, payload, timeout=10)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(payloads) / (time.perf_counter() - started)


async def open_loop(nc, subject: str, payloads: list[bytes], rate: float) -> list[float]:
    """Send at a fixed rate whatever the answers do, and time each answer. Replies come to one
    wildcard inbox subscription (no task or future per request), so that the generator, which shares
    the two cores with the limiter, nats-server and Redis, adds as little as it can."""
    inbox = nc.new_inbox()
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    all_answered = asyncio.Event()

    async def on_reply(msg) -> None:
        latencies.append((time.perf_counter() - sent_at.pop(int(msg.subject.rsplit(".", 1)[1]))) * 1000)
        if len(latencies) == len(payloads):
            all_answered.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    started = time.perf_counter()
    for i, payload in enumerate(payloads):
        delay = started + i / rate - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        sent_at[i] = time.perf_counter()
        await nc.publish(subject, payload, reply=f"{inbox}.{i}")
    await asyncio.wait_for(all_answered.wait(), 60)
    await sub.unsubscribe()
    return latencies


async def idle_gap_round_trips(nc, subject: str, payloads: list[bytes], gap_s: float) -> list[float]:
    """Sequential round trips with the machine idle for `gap_s` before each one: what a hop costs
    when the process it wakes was asleep, as in a gateway call, whose hops each wait for the last."""
    latencies = []
    for payload in payloads:
        await asyncio.sleep(gap_s)
        started = time.perf_counter()
        await nc.request(subject, payload, timeout=10)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def limit_requests(n: int) -> list[bytes]:
    return [LimitRequest(request_id=uuid.uuid4().hex, user_id=f"bench-{i % 1000}", tier="enterprise",
                         model="meta-llama/Llama-3-8b-chat-hf", prompt_tokens_estimate=10,
                         max_tokens=8).model_dump_json().encode() for i in range(n)]


async def bench_limiter(env: dict[str, str], lines: list[str]) -> None:
    echo_port, limiter_port = free_port(), free_port()
    echo = start_script("echo", env, ["-c", "from shared.service_app import serve; "
                                      f"serve('bench.echo_app:create_app', {echo_port})"], echo_port)
    nats_echo = start_script("nats-echo", env, ["-m", "bench.nats_echo", env["NATS_URL"]])
    limiter = ServiceProcess("limiter", {**env, "LIMITER_PORT": str(limiter_port)}, limiter_port).start()
    nc = await nats.connect(env["NATS_URL"])
    try:
        n = 20_000
        for subject in ("bench.echo", "bench.nats-echo", "llm.request"):
            await closed_loop(nc, subject, limit_requests(2000), 64)
        echo_rps = await closed_loop(nc, "bench.echo", limit_requests(n), 64)
        nats_echo_rps = await closed_loop(nc, "bench.nats-echo", limit_requests(n), 64)
        limiter_rps = await closed_loop(nc, "llm.request", limit_requests(n), 64)
        open_loops = []
        for label, rate in (("half the FastStream echo's peak", echo_rps / 2),
                            ("half the limiter's own peak", limiter_rps / 2)):
            payloads = limit_requests(int(rate * 5))
            open_loops.append(f"  at {rate:5.0f} req/s, {label} ({len(payloads)} requests each):")
            for name, subject in (("nats-py echo", "bench.nats-echo"), ("limiter", "llm.request")):
                latencies = await open_loop(nc, subject, payloads, rate)
                open_loops.append(f"    {name:<13} p50 {pct(latencies, .5):5.2f} ms   p99 {pct(latencies, .99):5.2f} ms")
        wake_ups = ["  sequential round trips (1000 each), back to back and after 5 ms idle:"]
        for name, subject in (("nats-py echo", "bench.nats-echo"), ("limiter", "llm.request")):
            busy = await idle_gap_round_trips(nc, subject, limit_requests(1000), 0)
            idle = await idle_gap_round_trips(nc, subject, limit_requests(1000), 0.005)
            wake_ups.append(f"    {name:<13} p50 {pct(busy, .5):5.2f} ms back to back   {pct(idle, .5):5.2f} ms after idle")
    finally:
        await nc.close()
        for process in (limiter, nats_echo, echo):
            process.stop()
    lines += [
        f"limiter ({n} requests at concurrency 64 each; then open-loop load for 5 s at two rates,"
        " beside the nats-py echo at the same rate):",
        f"  bare FastStream echo  {echo_rps:7.0f} req/s",
        f"  bare nats-py echo     {nats_echo_rps:7.0f} req/s",
        f"  limiter decisions     {limiter_rps:7.0f} req/s   ratio {limiter_rps / echo_rps:.2f}x the FastStream echo, "
        f"{limiter_rps / nats_echo_rps:.2f}x the nats-py echo",
        *open_loops,
        *wake_ups,
    ]


def ledger_events(n: int) -> list[bytes]:
    return [LlmCompleted(id=f"bench-{i}", request_id=f"bench-{i}", user_id=f"user-{i % 500}",
                         provider="together_ai", model="meta-llama/Llama-3-70b-chat-hf", prompt_tokens=1000 + i % 97,
                         completion_tokens=300 + i % 89, endpoint="/v1/chat/completions", success=True,
                         latency_ms=200 + i % 50, tags={"feature": f"f{i % 5}"}).model_dump_json().encode()
            for i in range(n)]


async def raw_pull_rate(js, n: int) -> float:
    """The baseline: nats-py pulling the same stream in batches of 500 and acking each message."""
    sub = await js.pull_subscribe("llm.completed", durable="bench-raw", stream="LLM")
    received = 0
    started = time.perf_counter()
    while received < n:
        for message in await sub.fetch(500, timeout=5):
            await message.ack()
            received += 1
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return n / elapsed


async def bench_ledger(env: dict[str, str], lines: list[str]) -> None:
    n = 30_000
    nc = await nats.connect(env["NATS_URL"])
    js = nc.jetstream()
    await ensure_streams(js)
    payloads = ledger_events(n)
    for start in range(0, n, 1000):
        await asyncio.gather(*(js.publish("llm.completed", p, stream="LLM") for p in payloads[start:start + 1000]))
    raw_rate = await raw_pull_rate(js, n)
    pool = await asyncpg.create_pool(env["DATABASE_URL"])
    cost_port = free_port()
    cost = ServiceProcess("cost", {**env, "COST_PORT": str(cost_port)}, cost_port).start()
    try:
        while (first := await pool.fetchval("SELECT count(*) FROM llm_usage")) == 0:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        while (done := await pool.fetchval("SELECT count(*) FROM llm_usage")) < n:
            await asyncio.sleep(0.05)
        ledger_rate = (done - first) / (time.perf_counter() - started)
        exact = await pool.fetchval("SELECT sum(cost) FROM llm_cost_rollups WHERE period = 'month' AND dimension = 'all'")
        ledger_sum = await pool.fetchval("SELECT sum(cost) FROM llm_usage")
    finally:
        cost.stop()
        await pool.close()
        await nc.close()
    lines += [
        f"cost ledger ({n} llm.completed events already in the stream, one cost process):",
        f"  raw nats-py pull + ack    {raw_rate:7.0f} events/s",
        f"  ledger + rollups + alerts {ledger_rate:7.0f} events/s   ratio {ledger_rate / raw_rate:.2f}x"
        f"   (rollup total equals ledger total: {exact == ledger_sum})",
    ]


async def main() -> None:
    nats_srv, nats_url = nats_server()
    redis_srv, redis_url = redis_server()
    pg = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]
    db_name = f"costwarden_bench_{uuid.uuid4().hex[:8]}"
    database_url = f"{pg}/{db_name}"
    await apply_migrations(database_url)
    config = Path(tempfile.mkstemp(suffix=".yaml")[1])
    config.write_text(BENCH_CONFIG)
    env = {"NATS_URL": nats_url, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "COSTWARDEN_CONFIG": str(config), "LOG_LEVEL": "WARNING"}
    lines = [f"costwarden bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores"]
    try:
        only = set(sys.argv[1:])
        if not only or "gateway" in only:
            await bench_gateway(env, database_url, lines)
        if not only or "throughput" in only:
            from bench.throughput import bench_throughput

            await bench_throughput(env, database_url, lines, nats_srv, redis_srv)
        if not only or "instructions" in only:
            from bench.instructions import bench_instructions

            async with gateway_stack(env, database_url) as stack:
                await bench_instructions(stack, lines)
        if not only or "limiter" in only:
            await bench_limiter(env, lines)
        if not only or "ledger" in only:
            await bench_ledger(env, lines)
        if not only or "console" in only:
            from bench.console_bench import bench_console

            await bench_console(env, pg, lines)
        if not only or "client" in only:
            from bench.client_bench import bench_client

            await bench_client(env, lines)
        if not only or "backup" in only:
            from bench.backup_bench import bench_backup

            await bench_backup(lines)
    finally:
        nats_srv.stop()
        redis_srv.stop()
        conn = await asyncpg.connect(f"{pg}/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await conn.close()
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.txt").write_text(report + "\n")


if __name__ == "__main__":
    asyncio.run(main())
