"""After the run, with traffic stopped and the consumers drained: do the books balance?"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from soak.system import SOAK_TIERS
from soak.traffic import WORKERS, Record

# What reservations in flight can hold at most: every driver's call at once, each reserved at its
# worst case (prompt and max_tokens, under 64 tokens) at the dearest price (the $30/1M fallback).
IN_FLIGHT_USD = WORKERS * 64 * Decimal("30") / 1_000_000


@dataclass
class Check:
    name: str
    expected: object
    found: object

    @property
    def ok(self) -> bool:
        return self.expected == self.found


async def ledger_checks(conn: asyncpg.Connection, record: Record) -> list[Check]:
    rows = await conn.fetch("SELECT request_id, usage_source, cost, user_id, created_at FROM llm_usage")
    per_request = Counter(row["request_id"] for row in rows)
    answered = {c["request_id"] for c in record.gateway if c["status"] == 200}
    with_id = {c["request_id"] for c in record.gateway if c.get("request_id")}  # admitted, whatever the outcome
    duplicated = sorted(rid for rid, n in per_request.items() if n > 1)
    orphans = sorted(rid for rid in per_request if rid not in with_id and rid not in record.upstream_completed)
    abandoned = {c["request_id"] for c in record.gateway if c["abandoned"] and c["status"] == 200}
    zero_abandoned = sorted(row["request_id"] for row in rows
                            if row["request_id"] in abandoned and row["cost"] == 0)
    return [
        Check("gateway calls answered 200 with no ledger row", [], sorted(answered - set(per_request))),
        Check("upstream llm.completed acked with no ledger row", [],
              sorted(record.upstream_completed - set(per_request))),
        Check("request ids with more than one ledger row", [], duplicated),
        Check("ledger rows with no call or event behind them", [], orphans),
        Check("abandoned streams recorded at $0", [], zero_abandoned),
    ]


async def rollup_checks(conn: asyncpg.Connection) -> list[Check]:
    """The rollups of every scope and period add up to the ledger, to the last decimal."""
    checks = []
    for period in ("hour", "day", "month"):
        for dimension, column in (("all", "''"), ("user", "coalesce(user_id, '')"), ("model", "model"),
                                  ("served_model", "served_model"), ("key", "coalesce(api_key_id::text, '')")):
            by_key = await conn.fetch(
                f"SELECT date_trunc('{period}', created_at, 'UTC') AS bucket, {column} AS key, sum(cost) AS cost"
                " FROM llm_usage GROUP BY 1, 2")
            rolled = await conn.fetch("SELECT bucket, key, cost FROM llm_cost_rollups WHERE period = $1"
                                      " AND dimension = $2", period, dimension)
            want = {(r["bucket"], r["key"]): r["cost"] for r in by_key
                    if dimension in ("all", "model", "served_model") or r["key"]}
            got = {(r["bucket"], r["key"]): r["cost"] for r in rolled}
            differences = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}
            checks.append(Check(f"rollups {period}/{dimension} equal the ledger", {}, differences))
    return checks


def limit_checks(record: Record) -> list[Check]:
    """No caller admitted more than its tier's requests in the hour the soak lasts."""
    admitted: Counter = Counter()
    tiers = {}
    for call in record.gateway:
        if call.get("request_id"):
            admitted[call["user_id"]] += 1
            tiers[call["user_id"]] = call["tier"]
    over = {user: n for user, n in admitted.items() if n > SOAK_TIERS[tiers[user]].requests}
    return [Check("callers admitted past their limit", {}, over)]


async def budget_checks(conn: asyncpg.Connection, record: Record) -> list[Check]:
    users = {c["user_id"]: c["tier"] for c in record.gateway}
    over = {}
    for row in await conn.fetch("SELECT user_id, sum(cost) AS cost FROM llm_usage WHERE user_id = ANY($1::text[])"
                                " GROUP BY user_id", list(users)):
        budget = SOAK_TIERS[users[row["user_id"]]].daily_budget_usd
        if row["cost"] > budget + IN_FLIGHT_USD:
            over[row["user_id"]] = str(row["cost"])
    return [Check("callers past their daily budget by more than a reservation", {}, over)]


def webhook_receipts(received: list[dict]) -> Counter:
    """How many times the webhook receiver accepted each alert (a delivery is a digest of alerts)."""
    keys: Counter = Counter()
    for request in received:
        if request["path"].startswith("/hook") and request["status"] == 200:
            keys.update(alert["key"] for alert in json.loads(request["body"])["alerts"])
    return keys


async def alert_checks(conn: asyncpg.Connection, dead_alerts: list[dict], received: list[dict]) -> list[Check]:
    routes = {"warning": ("slack", "webhook"), "critical": ("slack", "email", "webhook")}
    alerts = await conn.fetch("SELECT alert_key, severity FROM cost_alerts WHERE published_at IS NOT NULL")
    sent: defaultdict[str, Counter] = defaultdict(Counter)
    for row in await conn.fetch("SELECT alert_key, channel, count(*) AS n FROM alert_deliveries"
                                " WHERE status = 'sent' GROUP BY 1, 2"):
        sent[row["alert_key"]][row["channel"]] = row["n"]
    dead = {(letter.get("key"), letter.get("channel")) for letter in dead_alerts}
    wrong = {}
    for alert in alerts:
        for channel in routes.get(alert["severity"], ()):
            n = sent[alert["alert_key"]][channel]
            if n != 1 and (alert["alert_key"], channel) not in dead and (alert["alert_key"], None) not in dead:
                wrong[f"{alert['alert_key']} {channel}"] = n
    receipts = webhook_receipts(received)
    twice_or_never = {alert["alert_key"]: receipts[alert["alert_key"]] for alert in alerts
                      if receipts[alert["alert_key"]] != 1 and (alert["alert_key"], "webhook") not in dead}
    return [Check("alerts raised (warning and critical)", {"critical", "warning"},
                  {row["severity"] for row in alerts} & {"critical", "warning"}),
            Check("alerts not delivered exactly once per channel, nor dead-lettered", {}, wrong),
            Check("alerts the webhook receiver did not get exactly once", {}, twice_or_never)]


def dead_letter_checks(record: Record, dead_letters: Counter) -> list[Check]:
    consumers = {"llm.completed": 2, "limit.violation": 1}  # limiter-settlement and cost-ledger; limiter-violations
    want = {f"dlq.{subject}": n * consumers[subject] for subject, n in record.malformed_events.items()}
    got = {subject: n for subject, n in dead_letters.items() if not subject.startswith("dlq.alert")}
    return [Check("dead letters are exactly the malformed events sent", want, got),
            Check("malformed HTTP requests answered 4xx", [], [s for s in record.malformed_http if not 400 <= s < 500])]


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result"]
    for c in checks:
        shown = "ok" if c.ok else f"DIFFERENCE: expected {json.dumps(c.expected, default=str)[:200]}, " \
                                  f"found {json.dumps(c.found, default=str)[:400]}"
        lines.append(f"{c.name:<{width}}  {shown}")
    return "\n".join(lines)
