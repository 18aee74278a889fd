"""The cost service as a process on real NATS and Postgres: exactly-once ledger through the gateway,
dead letters, replicas sharing the work, SIGKILL mid-batch, a Postgres outage, alerts on the bus, and
per-user isolation of the cost endpoints."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import nats
import pytest

from shared.events import LlmCompleted
from tests.conftest import start_service, unique
from tests.integration.helpers import CHEAP_MODEL, auth, chat_body, new_key, stream_messages
from tests.integration.service_tests import all_acked, start_all, stop_all
from tests.servers import PostgresServer, nats_server, postgres_binaries
from tests.support.polling import eventually

pytestmark = pytest.mark.service

STORING_FAILED = "events from cost-ledger failed"  # shared/batch_consumer.py's warning when a store fails


def completed(i: int, prefix: str, **extra) -> LlmCompleted:
    request_id = f"{prefix}-{i}"
    fields = dict(id=request_id, request_id=request_id, user_id=f"user-{i % 7}", provider="together_ai",
                  model="meta-llama/Llama-3-70b-chat-hf", prompt_tokens=1000 + i % 13, completion_tokens=500 + i % 11,
                  endpoint="/v1/chat/completions", success=True, latency_ms=50)
    return LlmCompleted(**{**fields, **extra})


def expected_cost(events: list[LlmCompleted]) -> Decimal:
    return sum((Decimal(e.prompt_tokens + e.completion_tokens) * Decimal("0.90") / 1_000_000 for e in events),
               Decimal(0))


async def publish_all(js, events: list[LlmCompleted]) -> None:
    for start in range(0, len(events), 200):
        await asyncio.gather(*(js.publish("llm.completed", e.model_dump_json().encode(), stream="LLM",
                                          headers={"Nats-Msg-Id": e.request_id}) for e in events[start:start + 200]))


async def test_gateway_calls_land_in_the_ledger_once(gateway, cost_service, database_url, nc, db):
    user = unique("ledger")
    key = await new_key(database_url, user, "pro")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        responses = [await client.post("/v1/chat/completions", json=chat_body(), headers={
            **auth(key), "X-Costwarden-Tags": "feature=search"}) for _ in range(3)]
    ids = [r.headers["x-request-id"] for r in responses]
    await eventually(lambda: db.fetchval("SELECT count(*) = 3 FROM llm_usage WHERE user_id = $1", user))
    rows = await db.fetch("SELECT * FROM llm_usage WHERE user_id = $1", user)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    usage = responses[0].json()["usage"]
    row = next(r for r in rows if r["request_id"] == ids[0])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["cost"] == Decimal(usage["prompt_tokens"] + usage["completion_tokens"]) * Decimal("0.20") / 1_000_000
    assert json.loads(row["tags"]) == {"feature": "search"} and row["provider"] == "together_ai"

    # the same event published again after the de-duplication window would have passed (new msg id)
    [event] = [e for e in await stream_messages(nc.jetstream(), "LLM", "llm.completed") if e["request_id"] == ids[0]]
    await nc.jetstream().publish("llm.completed", json.dumps(event).encode(), headers={"Nats-Msg-Id": "other-id"})
    marker = completed(0, unique("marker"), user_id=user)
    await nc.jetstream().publish("llm.completed", marker.model_dump_json().encode())
    await eventually(lambda: db.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = $1", marker.request_id))
    assert await db.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = $1", ids[0]) == 1


async def test_invalid_completed_events_are_dead_lettered_and_the_ledger_goes_on(cost_service, nc, db):
    js = nc.jetstream()
    await js.publish("llm.completed", b"not json at all")
    await js.publish("llm.completed", json.dumps({"request_id": "neg", "provider": "p", "model": "m",
                                                   "prompt_tokens": -3, "completion_tokens": 1, "endpoint": "/",
                                                   "success": True, "latency_ms": 1}).encode())
    await js.publish("llm.completed", json.dumps({"provider": "p", "model": "m", "prompt_tokens": 1,
                                                   "completion_tokens": 1, "endpoint": "/", "success": True,
                                                   "latency_ms": 1}).encode())
    good = completed(1, unique("after-bad"))
    await js.publish("llm.completed", good.model_dump_json().encode())
    assert await eventually(lambda: db.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = $1",
                                                good.request_id))

    async def cost_letters():
        letters = [m for m in await stream_messages(js, "DLQ", "dlq.llm.completed") if m["service"] == "cost"]
        return letters if len(letters) >= 3 else None

    letters = await eventually(cost_letters)
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert "malformed JSON" in reasons and "prompt_tokens" in reasons and "request_id: Field required" in reasons


@pytest.fixture
def isolated(base_env, fresh_database, tmp_path):
    """A bus and a database of their own, so totals and alerts are this test's alone."""
    nats_srv, nats_url = nats_server()
    config = tmp_path / "costwarden.yaml"
    config.write_text("thresholds:\n  hourly: {warning: '0.5', critical: '1'}\n  daily: {}\n  monthly: {}\n"
                      "  user_daily: {}\n")
    env = {**base_env, "NATS_URL": nats_url, "DATABASE_URL": fresh_database, "COSTWARDEN_CONFIG": str(config)}
    yield env
    nats_srv.stop()


async def test_three_replicas_share_the_work_and_a_sigkill_mid_batch_loses_and_doubles_nothing(isolated):
    replicas = await start_all("cost", "COST_PORT", [isolated] * 3)
    nc = await nats.connect(isolated["NATS_URL"])
    pool = await asyncpg.create_pool(isolated["DATABASE_URL"])
    try:
        js = nc.jetstream()
        events = [completed(i, "kill") for i in range(6000)]
        publisher = asyncio.create_task(publish_all(js, events))
        await eventually(lambda: pool.fetchval("SELECT count(*) >= 300 FROM llm_usage"), interval_s=0.01)
        replicas[0].stop(signal.SIGKILL)
        restart = asyncio.create_task(start_all("cost", "COST_PORT", [isolated]))  # while the rest is published
        try:
            await publisher
        finally:
            [replicas[0]] = await restart
        count = await eventually(lambda: pool.fetchval("SELECT count(*) = 6000 FROM llm_usage"), timeout_s=90)
        assert count, await pool.fetchval("SELECT count(*) FROM llm_usage")
        # every event acked, so none can come again and be recorded twice
        assert await eventually(lambda: all_acked(js, "LLM", "cost-ledger"))
        assert await pool.fetchval("SELECT count(*) FROM llm_usage") == 6000
        assert await pool.fetchval("SELECT count(DISTINCT request_id) FROM llm_usage") == 6000
        assert await pool.fetchval("SELECT sum(cost) FROM llm_usage") == expected_cost(events)
        rollup = await pool.fetchval("SELECT sum(cost) FROM llm_cost_rollups WHERE period = 'day' AND dimension = 'all'")
        assert rollup == expected_cost(events)
        requests = await pool.fetchval("SELECT sum(requests) FROM llm_cost_rollups WHERE period='hour' AND dimension='user'")
        assert requests == 6000
        # every replica did part of the work
        recorded = []
        for replica in replicas[1:]:
            metrics = httpx.get(f"{replica.url}/metrics").text
            recorded.append(sum(float(line.split()[-1]) for line in metrics.splitlines()
                                if line.startswith("costwarden_cost_events_recorded_total")))
        assert all(r > 0 for r in recorded), recorded
        # each hourly alert fired once, whatever the replicas and the kill
        alerts = await pool.fetch("SELECT alert_key, severity, published_at FROM cost_alerts")
        assert sorted(a["severity"] for a in alerts) == ["critical", "warning"]
        await eventually(lambda: pool.fetchval("SELECT bool_and(published_at IS NOT NULL) FROM cost_alerts"))
        published = await stream_messages(js, "ALERTS", "alert.>")
        assert sorted(a["severity"] for a in published) == ["critical", "warning"]
        critical = next(a for a in published if a["severity"] == "critical")
        assert critical["text"].startswith("CRITICAL: Hourly LLM cost ($")
        assert critical["text"].endswith("exceeded critical threshold ($1)")
    finally:
        await nc.close()
        await pool.close()
        await stop_all(replicas)


@pytest.mark.skipif(postgres_binaries() is None, reason="no PostgreSQL server binaries to run a private cluster")
async def test_postgres_outage_acks_nothing_and_catches_up(isolated):
    from services.deploy.migrate import apply_migrations

    pg = PostgresServer()
    pg.start()
    database_url = pg.url.rsplit("/", 1)[0] + "/costwarden"
    await apply_migrations(database_url)
    cost = start_service("cost", {**isolated, "DATABASE_URL": database_url}, "COST_PORT")
    nc = await nats.connect(isolated["NATS_URL"])
    try:
        js = nc.jetstream()
        first = [completed(i, "before") for i in range(100)]
        await publish_all(js, first)

        async def stored() -> int:
            conn = await asyncpg.connect(database_url)
            try:
                return await conn.fetchval("SELECT count(*) FROM llm_usage")
            finally:
                await conn.close()

        assert await eventually(lambda: _equals(stored, 100))
        pg.stop()
        failed_before = cost.logs().count(STORING_FAILED)
        during = [completed(i, "during") for i in range(500)]
        await publish_all(js, during)
        # two attempts to store while Postgres is down, both failed
        assert await eventually(lambda: cost.logs().count(STORING_FAILED) >= failed_before + 2)
        info = await js.consumer_info("LLM", "cost-ledger")
        assert info.num_pending + info.num_ack_pending >= 500  # nothing acked while Postgres is down
        ready = httpx.get(f"{cost.url}/health/ready")
        assert ready.status_code == 503 and httpx.get(f"{cost.url}/health/live").status_code == 200
        pg.start()
        assert await eventually(lambda: _equals(stored, 600), timeout_s=90)
        conn = await asyncpg.connect(database_url)
        total = await conn.fetchval("SELECT sum(cost) FROM llm_usage")
        await conn.close()
        assert total == expected_cost(first + during)
        assert "storing" in cost.logs() and "redelivery in" in cost.logs()
    finally:
        await nc.close()
        cost.stop()
        pg.stop()


async def _equals(fn, value) -> bool:
    try:
        return await fn() == value
    except (OSError, asyncpg.PostgresError):
        return False


async def test_cost_endpoints_show_a_user_only_their_own_usage(gateway, cost_service, database_url, db):
    alice, bob = unique("alice"), unique("bob")
    alice_key, bob_key = await new_key(database_url, alice, "pro"), await new_key(database_url, bob, "pro")
    admin_key = await new_key(database_url, unique("admin"), "enterprise", admin=True)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for _ in range(2):
            await client.post("/v1/chat/completions", json=chat_body(max_tokens=10), headers=auth(alice_key))
        await client.post("/v1/chat/completions", json=chat_body(max_tokens=10), headers=auth(bob_key))
        await eventually(lambda: db.fetchval("SELECT count(*) = 3 FROM llm_usage WHERE user_id IN ($1, $2)", alice, bob))
        alice_cost = await db.fetchval("SELECT sum(cost) FROM llm_usage WHERE user_id = $1", alice)

        mine = (await client.get("/api/costs/current", headers=auth(alice_key))).json()
        assert mine["user_id"] == alice and Decimal(mine["daily"]) == alice_cost
        forbidden = await client.get(f"/api/costs/current?user_id={bob}", headers=auth(alice_key))
        assert forbidden.status_code == 403
        assert (await client.get("/api/costs/current")).status_code == 401

        now = datetime.now(UTC)
        params = {"start": (now - timedelta(hours=1)).isoformat(), "end": (now + timedelta(minutes=5)).isoformat()}
        own = (await client.get("/api/costs/analytics", params=params, headers=auth(alice_key))).json()
        assert own["requests"] == 2 and [u["key"] for u in own["by_user"]] == [alice]
        assert own["by_model"][0]["key"] == CHEAP_MODEL and Decimal(own["cost"]) == alice_cost
        assert set(own["latency_ms"]) == {"p50", "p95", "p99"}

        everyone = (await client.get("/api/costs/analytics", params={**params, "top_n": "100"},
                                     headers=auth(admin_key))).json()
        assert {alice, bob} <= {u["key"] for u in everyone["by_user"]}
        admin_view = (await client.get(f"/api/costs/current?user_id={bob}", headers=auth(admin_key))).json()
        assert admin_view["user_id"] == bob
        overall = (await client.get("/api/costs/current", headers=auth(admin_key))).json()
        assert overall["user_id"] is None and Decimal(overall["daily"]) >= alice_cost

        bad = await client.get("/api/costs/analytics", params={"start": "yesterday", "end": "now"},
                               headers=auth(alice_key))
        assert bad.status_code == 400 and "start" in bad.json()["error"]["message"]
