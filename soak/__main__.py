"""`make soak` (SOAK_MINUTES, default 5): the whole system under load and faults, reconciled to the cent.

python -m soak [--seconds N] [--seed S] [--short]   exits 1 on any difference, after printing the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter

import asyncpg
import nats

from services.keys.pg_key_admin import create_key
from soak.faults import inject, schedule
from soak.reconcile import (
    Check,
    alert_checks,
    budget_checks,
    dead_letter_checks,
    ledger_checks,
    limit_checks,
    rollup_checks,
    table,
)
from soak.system import System, start_system
from soak.traffic import Caller, Traffic

WARM_UP_S = 20.0
CALLERS = {"free": 2, "pro": 4, "enterprise": 3}
ANONYMOUS = ("192.0.2.10", "192.0.2.11")


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} soak  {line}", flush=True)


async def make_callers(database_url: str) -> list[Caller]:
    conn = await asyncpg.connect(database_url)
    try:
        keyed = [Caller((await create_key(conn, f"soak-{tier}-{i}", tier, actor="soak"))[1], f"soak-{tier}-{i}", tier)
                 for tier, n in CALLERS.items() for i in range(n)]
        return keyed + [Caller(None, f"anonymous-{ip}", "anonymous", ip) for ip in ANONYMOUS]
    finally:
        await conn.close()


async def watch_memory(system: System, baselines: dict[str, int], stopping: asyncio.Event) -> None:
    """Each process's resident memory once it has run WARM_UP_S (again after a restart)."""
    seen: set[tuple[str, float]] = set()
    while not stopping.is_set():
        for replica in system.replicas:
            mark = (replica.name, replica.started_at)
            if mark not in seen and time.monotonic() - replica.started_at >= WARM_UP_S:
                rss = replica.rss_kib()
                if rss is not None:
                    seen.add(mark)
                    baselines[replica.name] = rss
        await asyncio.sleep(1)


async def request_backup(system: System) -> int:
    env = {**os.environ, **system.replicas[0].env}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.cli", "backup", "run", "--wait",
                                                      "--timeout", "120"], env=env, capture_output=True, text=True)
    log(f"backup requested: exit {result.returncode} {result.stdout.strip() or result.stderr.strip()[-200:]}")
    return result.returncode


async def drained(system: System, patience_s: float = 180) -> bool:
    """Every durable consumer has nothing pending nor unacknowledged."""
    nc = await nats.connect(servers=system.nats_urls)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            try:
                waiting = 0
                for stream in ("LLM", "LIMITS", "ALERTS", "BACKUP", "SCHEDULE"):
                    for consumer in await js.consumers_info(stream):
                        waiting += (consumer.num_pending or 0) + (consumer.num_ack_pending or 0)
                if waiting == 0:
                    return True
            except (nats.errors.Error, TimeoutError):
                pass
            await asyncio.sleep(2)
        return False
    finally:
        await nc.close()


async def dead_letters(system: System) -> tuple[Counter, list[dict]]:
    nc = await nats.connect(servers=system.nats_urls)
    try:
        js = nc.jetstream()
        state = (await js.stream_info("DLQ")).state
        by_subject: Counter = Counter()
        alerts = []
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg("DLQ", seq)
            by_subject[msg.subject] += 1
            if msg.subject == "dlq.alert":
                letter = json.loads(msg.data or b"{}")
                alerts.append({"key": json.loads(letter["payload"]).get("key"),
                               "channel": letter["reason"].split(" ", 1)[0]})
        return by_subject, alerts
    finally:
        await nc.close()


async def soak(seconds: float, seed: int, short: bool) -> int:
    log(f"starting the system ({seconds:.0f} s run, seed {seed}{', short' if short else ''})")
    system = await start_system(log)
    try:
        callers = await make_callers(system.database_url)
        traffic = Traffic(system.api_url, system.nats_urls, callers, seed)
        baselines: dict[str, int] = {}
        stopping = asyncio.Event()
        started = time.monotonic()
        memory = asyncio.create_task(watch_memory(system, baselines, stopping))
        running = asyncio.create_task(traffic.run())
        faults = asyncio.create_task(inject(schedule(system, seconds, seed, short), started, log))
        await asyncio.sleep(seconds * 0.4)
        backup_exit = await request_backup(system)
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
        traffic.stopping.set()
        await running
        survived = await faults
        elapsed = time.monotonic() - started
        log(f"traffic stopped after {elapsed:.0f} s; draining the consumers")
        is_drained = await drained(system)
        await asyncio.sleep(10)  # the notifier's last retries and the cost service's last batch
        stopping.set()
        await memory
        checks = [Check("every consumer drained", True, is_drained),
                  Check("the requested backup completed and verified", 0, backup_exit)]
        conn = await asyncpg.connect(system.database_url)
        try:
            dead, dead_alerts = await dead_letters(system)
            checks += await ledger_checks(conn, traffic.record)
            checks += await rollup_checks(conn)
            checks += limit_checks(traffic.record)
            checks += await budget_checks(conn, traffic.record)
            checks += await alert_checks(conn, dead_alerts, system.http_sink.received)
            checks += dead_letter_checks(traffic.record, dead)
            rows = await conn.fetchval("SELECT count(*) FROM llm_usage")
            backups = await conn.fetchval("SELECT count(*) FROM backup_logs WHERE status = 'success'")
        finally:
            await conn.close()
        at_end = {r.name: r.rss_kib() for r in system.replicas}
        grown = {name: (baselines[name], rss) for name, rss in at_end.items()
                 if name in baselines and rss is not None and rss > 1.5 * baselines[name]}
        exited = sorted(name for name, rss in at_end.items() if rss is None)
        checks.append(Check("processes that exited on their own", [], exited))
        checks.append(Check("processes whose memory grew past 1.5x its warmed-up size", {}, grown))
        statuses = Counter(call["status"] for call in traffic.record.gateway)
        abandoned = sum(1 for call in traffic.record.gateway if call["abandoned"] and call["status"] == 200)
        log(f"load: {len(traffic.record.gateway) / elapsed:.1f} gateway calls/s ({dict(sorted(statuses.items()))}), "
            f"{sum(traffic.record.upstream_requests.values()) / elapsed:.1f} upstream decisions/s, "
            f"{rows / elapsed:.1f} ledger events/s ({rows} rows), {backups} backup(s), "
            f"{abandoned} streams abandoned half-way, {sum(traffic.record.malformed_events.values())} malformed "
            f"events, {len(dead_alerts)} alert deliveries dead-lettered, driver errors "
            f"{dict(traffic.record.errors)}")
        log("faults survived: " + "; ".join(survived))
        print(table(checks), flush=True)
        failed = [c for c in checks if not c.ok]
        log("PASSED: the books balance" if not failed else f"FAILED: {len(failed)} difference(s)")
        return 1 if failed else 0
    finally:
        system.stop()


def main() -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the S3 server's line per request
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_MINUTES", "5")) * 60)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "7")))
    parser.add_argument("--short", action="store_true", help="fewer faults (the run in make test)")
    args = parser.parse_args()
    return asyncio.run(soak(args.seconds, args.seed, args.short))


if __name__ == "__main__":
    sys.exit(main())
