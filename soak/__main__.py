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
from decimal import Decimal

import asyncpg
import nats
from redis.asyncio import Redis

from services.keys.pg_key_admin import create_key
from services.limiter.pg_limits_source import PgLimitsSource
from services.limiter.scopes import budget_counters, epoch_ms
from services.teams.pg_team_admin import PgTeamAdmin
from services.teams.team_admin import TeamAdmin
from shared.cost_query import CostQuery
from shared.events import LimitsChanged, utc_now
from shared.limits import Budget, ScopeLimits
from shared.subjects import COST_QUERY, LIMITS_CHANGED
from soak.faults import inject, schedule
from soak.reconcile import (
    Check,
    alert_checks,
    budget_checks,
    dead_letter_checks,
    ledger_checks,
    limit_checks,
    rollup_checks,
    scope_budget_checks,
    scope_spend_checks,
    table,
)
from soak.system import System, start_system
from soak.traffic import Caller, Traffic

WARM_UP_S = 20.0
CALLERS = {"free": 2, "pro": 4, "enterprise": 3}
ANONYMOUS = ("192.0.2.10", "192.0.2.11")
# The pro callers are one team whose daily budget is below their tiers' together, with soft alerts; one of
# their keys has a smaller budget of its own.
TEAM = "soak-pro"
TEAM_LIMITS = ScopeLimits(budgets=(Budget(usd=Decimal("0.012"), period="day"),), soft=(Decimal("0.5"), Decimal("0.8")))
KEY_LIMITS = ScopeLimits(budgets=(Budget(usd=Decimal("0.002"), period="day", timezone="Europe/Berlin"),))


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} soak  {line}", flush=True)


async def make_callers(database_url: str, nats_urls: list[str]) -> list[Caller]:
    conn = await asyncpg.connect(database_url)
    try:
        made = {f"soak-{tier}-{i}": (tier, await create_key(conn, f"soak-{tier}-{i}", tier, actor="soak"))
                for tier, n in CALLERS.items() for i in range(n)}
    finally:
        await conn.close()
    nc = await nats.connect(servers=nats_urls)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        async def announce(subject: str) -> None:
            await nc.publish(LIMITS_CHANGED, LimitsChanged(subject=subject).model_dump_json().encode())

        teams = TeamAdmin(PgTeamAdmin(pool), announce)
        pros = sorted(user for user, (tier, _) in made.items() if tier == "pro")
        await teams.create_team(TEAM, "Soak pro callers", pros, "soak")
        await teams.set_limits("team", TEAM, TEAM_LIMITS, "soak")
        await teams.set_limits("key", str(made[pros[0]][1][0].id), KEY_LIMITS, "soak")
        await nc.flush()
    finally:
        await pool.close()
        await nc.close()
    keyed = [Caller(key, user, tier) for user, (tier, (_, key)) in made.items()]
    return keyed + [Caller(None, f"anonymous-{ip}", "anonymous", ip) for ip in ANONYMOUS]


async def budget_views(system: System, conn: asyncpg.Connection) -> tuple[dict, dict[str, int]]:
    """What the admin API reports for each scope with budgets (cost.query, as GET .../spend asks it), and
    the limiter's counter of each budget's current period in Redis (nano-USD)."""
    nc = await nats.connect(servers=system.nats_urls)
    redis = Redis(port=system.redis.port)
    reported: dict = {}
    counted: dict[str, int] = {}
    try:
        for row in await conn.fetch("SELECT scope, scope_id FROM scope_limits"):
            query = CostQuery(kind="budgets", scope=row["scope"], scope_id=row["scope_id"])
            answer = json.loads((await nc.request(COST_QUERY, query.model_dump_json().encode(), timeout=10)).data)
            reported[(row["scope"], row["scope_id"])] = answer["budgets"]
        async with asyncpg.create_pool(system.database_url, min_size=1, max_size=1) as pool:
            book = await PgLimitsSource(pool).load()
        now = utc_now()
        for key, counter in budget_counters(book).items():
            values = {int(field): int(value) for field, value in (await redis.hgetall(key)).items()}
            budget = counter.budget
            field = epoch_ms(budget.span(now).start)
            counted[f"{counter.scope}:{counter.scope_id} {budget.spec}"] = (
                values.get(field, 0) if budget.period else sum(values.values()))
    finally:
        await redis.aclose()
        await nc.close()
    return reported, counted


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


async def drained(system: System, patience_s: float = 180, quiet_s: float = 2) -> bool:
    """Every durable consumer has had nothing pending nor unacknowledged for `quiet_s`: the cost service
    acks a batch once it is written and the notifier an alert once its retries are over, so nothing is
    still on its way (an alert the last batch raised is pending on ALERTS before that batch is acked)."""
    nc = await nats.connect(servers=system.nats_urls)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + patience_s
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            try:
                waiting = 0
                for stream in ("LLM", "LIMITS", "ALERTS", "BACKUP", "SCHEDULE"):
                    for consumer in await js.consumers_info(stream):
                        waiting += (consumer.num_pending or 0) + (consumer.num_ack_pending or 0)
            except (nats.errors.Error, TimeoutError):
                waiting = -1
            quiet_since = (quiet_since or time.monotonic()) if waiting == 0 else None
            if quiet_since is not None and time.monotonic() - quiet_since >= quiet_s:
                return True
            await asyncio.sleep(0.25)
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
        callers = await make_callers(system.database_url, system.nats_urls)
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
        stopping.set()
        await memory
        checks = [Check("every consumer drained", True, is_drained),
                  Check("the requested backup completed and verified", 0, backup_exit)]
        conn = await asyncpg.connect(system.database_url)
        try:
            dead, dead_alerts = await dead_letters(system)
            checks += await ledger_checks(conn, traffic.record)
            checks += await rollup_checks(conn)
            checks += await scope_spend_checks(conn)
            reported, counted = await budget_views(system, conn)
            checks += await scope_budget_checks(conn, reported, counted, utc_now())
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
