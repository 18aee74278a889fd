"""costwarden on a three-node NATS cluster (JetStream, cluster routes, all on loopback): streams with
three replicas, and the node leading the ledger's stream killed while the gateway serves calls."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter

import asyncpg
import httpx
import nats
import nats.js.errors
import pytest

from shared.events import LlmCompleted
from shared.subjects import STREAMS, ensure_streams
from tests.conftest import start_service, start_services, unique
from tests.integration.helpers import auth, chat_body, new_key
from tests.servers import nats_cluster, s3_server, stop_all
from tests.support.polling import eventually

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def cluster_of_three():
    nodes, urls = nats_cluster(3)
    yield nodes, urls
    stop_all(nodes)


@pytest.fixture
async def cluster(cluster_of_three):
    """The module's cluster as every test starts on it: each node up, each stream with a leader and two
    current replicas (a test before may have killed a node)."""
    nodes, urls = cluster_of_three
    for node in nodes:
        if node.process is None or node.process.poll() is not None:
            node.start()
    nc = await connect(urls)
    try:
        async def all_three_current() -> bool:
            try:
                states = [await replicas_of(nc.jetstream(), spec.name) for spec in STREAMS]
            except Exception:  # noqa: BLE001 - a stream still electing its leader does not answer
                return False
            return all(n == 3 and leader and len(peers) == 2 and all(peers) for n, leader, peers in states)

        assert await eventually(all_three_current, 60), "the cluster did not recover from the test before"
    finally:
        await nc.close()
    return nodes, urls


async def connect(urls: list[str]):
    nc = await nats.connect(servers=urls, max_reconnect_attempts=-1, reconnect_time_wait=0.5)

    async def jetstream_ready() -> bool:
        try:
            await nc.jetstream().account_info()
        except Exception:  # noqa: BLE001 - the cluster is still electing its meta leader
            return False
        return True

    assert await eventually(jetstream_ready, 30), "the cluster's JetStream never came up"
    return nc


async def stored_messages(js, stream: str) -> list[dict]:
    """Every message of a stream, read one by one from its leader: unlike a throw-away consumer (which
    took over 5 s to create with a node down), this needs nothing new agreed across the cluster."""
    state = (await js.stream_info(stream)).state
    return [json.loads((await js.get_msg(stream, seq)).data) for seq in range(state.first_seq, state.last_seq + 1)]


async def replicas_of(js, stream: str) -> tuple[int, str | None, list[bool]]:
    """(configured replicas, leader, whether each other replica is current)."""
    info = await js.stream_info(stream)
    peers = info.cluster.replicas or [] if info.cluster else []
    return info.config.num_replicas, info.cluster.leader if info.cluster else None, [p.current for p in peers]


async def test_every_stream_takes_the_configured_replicas_and_follows_a_change(cluster):
    _, urls = cluster
    nc = await connect(urls)
    js = nc.jetstream()
    try:
        await ensure_streams(js, replicas=3)

        async def all_replicated() -> bool:
            states = [await replicas_of(js, spec.name) for spec in STREAMS]
            return all(n == 3 and leader and len(peers) == 2 and all(peers) for n, leader, peers in states)

        assert await eventually(all_replicated, 30)
        await ensure_streams(js, replicas=1)
        assert [(await replicas_of(js, spec.name))[0] for spec in STREAMS] == [1] * len(STREAMS)
        await ensure_streams(js, replicas=3)
        assert await eventually(all_replicated, 30)
    finally:
        await nc.close()


CALLS = 2000
CONCURRENCY = 16


ROOMY_TIERS = {name: {"requests": 100_000, "window_s": 3600, "strict_requests": 100, "tokens_per_minute": 10**9,
                      "daily_budget_usd": "100000"} for name in ("anonymous", "free", "pro", "enterprise")}


async def test_calls_survive_losing_the_node_that_leads_the_ledger(cluster, base_env, database_url, db, tmp_path):
    nodes, urls = cluster
    config = tmp_path / "costwarden.yaml"
    config.write_text(json.dumps({"tiers": ROOMY_TIERS}))  # room for every call: only the fault may refuse one
    env = {**base_env, "NATS_URL": ",".join(urls), "NATS_STREAM_REPLICAS": "3", "COSTWARDEN_CONFIG": str(config)}
    services = start_services(("limiter", env, "LIMITER_PORT"), ("cost", env, "COST_PORT"),
                              ("api", env, "API_PORT"))
    api = services[-1]
    nc = await connect(urls)
    js = nc.jetstream()
    try:
        _, leader, _ = await replicas_of(js, "LLM")
        victim = next(node for node in nodes if node.name == f"nats-{leader}")
        user = unique("cluster")
        key = await new_key(database_url, user, "enterprise")
        statuses: Counter[int] = Counter()
        answered: list[str] = []
        queue = iter(range(CALLS))

        async def caller(client: httpx.AsyncClient) -> None:
            for i in queue:
                if i == CALLS // 3:
                    victim.kill()  # SIGKILL the node that leads the ledger's stream, mid-traffic
                response = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    answered.append(response.headers["x-request-id"])

        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            await asyncio.gather(*(caller(client) for _ in range(CONCURRENCY)))
        victim.start()

        async def ledger_complete() -> list:
            rows = await db.fetch("SELECT request_id FROM llm_usage WHERE user_id = $1", user)
            return rows if len(rows) >= len(answered) else []

        rows = await eventually(ledger_complete, 90)

        async def back_to_three() -> bool:
            n, leader, peers = await replicas_of(js, "LLM")
            return n == 3 and leader is not None and len(peers) == 2 and all(peers)

        assert await eventually(back_to_three, 60), "the stream did not get its three current replicas back"
        assert all(service.process.poll() is None for service in services), "a service died"
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            after = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
    finally:
        await nc.close()
        stop_all(services)
    print(f"answered {len(answered)} of {CALLS} calls: {dict(statuses)}; ledger rows {len(rows)}")
    assert len(answered) >= CALLS * 0.9, statuses
    recorded = Counter(row["request_id"] for row in rows)
    assert set(recorded) == set(answered) and max(recorded.values()) == 1  # each answered call once, no other
    assert after.status_code == 200


async def test_a_backup_and_a_cost_alert_complete_after_a_node_fails(cluster, base_env, fresh_database, tmp_path):
    nodes, urls = cluster
    moto, s3_env = s3_server("cluster")
    config = tmp_path / "costwarden.yaml"
    config.write_text(json.dumps({"thresholds": {"hourly": {"warning": "0.50"}}}))
    env = {**base_env, **s3_env, "NATS_URL": ",".join(urls), "NATS_STREAM_REPLICAS": "3",
           "DATABASE_URL": fresh_database, "COSTWARDEN_CONFIG": str(config),
           "S3_BACKUP_PREFIX": "while-a-node-is-down"}
    nc = await connect(urls)
    services = []
    down = nodes[1]
    try:
        services = start_services(("cost", env, "COST_PORT"), ("backup", env, "BACKUP_PORT"))

        async def backup_worker_pulling() -> bool:
            try:
                info = await nc.jetstream().consumer_info("BACKUP", "backup-requests")
            except nats.js.errors.NotFoundError:  # the worker has not created its consumer yet
                return False
            return (info.num_waiting or 0) > 0

        assert await eventually(backup_worker_pulling, 60)
        down.kill()  # a node fails while the services run

        async def every_stream_led() -> bool:
            try:
                return all([(await replicas_of(nc.jetstream(), spec.name))[1] for spec in STREAMS])
            except Exception:  # noqa: BLE001 - a stream still electing its leader does not answer
                return False

        assert await eventually(every_stream_led, 60), "the streams never elected new leaders"
        spend = LlmCompleted(request_id=unique("spend"), user_id="ann", provider="together_ai",
                             model="meta-llama/Llama-3-70b-chat-hf", prompt_tokens=1_000_000, completion_tokens=0,
                             endpoint="/v1/chat/completions", success=True, latency_ms=10)  # $0.90 > $0.50
        await nc.jetstream().publish("llm.completed", spend.model_dump_json().encode(),
                                     headers={"Nats-Msg-Id": spend.request_id})
        db = await asyncpg.connect(fresh_database)
        try:
            published = await eventually(lambda: db.fetchval(
                "SELECT alert_key FROM cost_alerts WHERE published_at IS NOT NULL"), 90)
            backup = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.cli", "backup", "run",
                                                              "--wait", "--timeout", "90"],
                                             env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
            status = await db.fetchval("SELECT status FROM backup_logs ORDER BY id DESC LIMIT 1")
        finally:
            await db.close()
        alerts = [m for m in await stored_messages(nc.jetstream(), "ALERTS") if m.get("key") == published]
    finally:
        await nc.close()
        stop_all(services)
        if down.process is not None and down.process.poll() is not None:
            down.start()
        moto.stop()
    assert published and published.startswith("cost:all:hour:") and len(alerts) == 1
    assert backup.returncode == 0, backup.stderr
    assert "while-a-node-is-down/costwarden_backup_" in backup.stdout and status == "success"


LIMITER_DURABLES = (("LLM", "limiter-settlement"), ("LIMITS", "limiter-violations"))


async def test_a_service_starting_for_the_first_time_while_a_node_is_down_creates_its_consumers(cluster, base_env):
    """Its durables do not exist yet, and the cluster is electing new leaders: creating them is not
    answered for a while, and the service asks again instead of failing its start."""
    nodes, urls = cluster
    nc = await connect(urls)
    try:
        for stream, durable in LIMITER_DURABLES:  # made by a limiter of a test before: as if it never ran
            try:
                await nc.jetstream().delete_consumer(stream, durable)
            except nats.js.errors.NotFoundError:
                pass
        _, leader, _ = await replicas_of(nc.jetstream(), "LLM")
    finally:
        await nc.close()
    down = next(node for node in nodes if node.name == f"nats-{leader}")
    limiter = None
    try:
        down.kill()  # the node leading the stream of the limiter's first durable: its stream elects anew
        limiter = start_service("limiter", {**base_env, "NATS_URL": ",".join(urls), "NATS_STREAM_REPLICAS": "3"},
                                "LIMITER_PORT")
        nc = await connect([url for node, url in zip(nodes, urls, strict=True) if node is not down])
        try:
            async def durables() -> set[str]:
                """Each asked for by name: listing a stream's consumers waits for every replica to answer,
                the one that is down too (seconds a time)."""
                found = set()
                for stream, durable in LIMITER_DURABLES:
                    try:
                        await nc.jetstream().consumer_info(stream, durable, timeout=2)
                    except Exception:  # noqa: BLE001 - not created yet, or its stream still electing its leader
                        continue
                    found.add(durable)
                return found

            async def both_created() -> bool:
                return {durable for _, durable in LIMITER_DURABLES} <= await durables()

            assert await eventually(both_created, 90), await durables()
        finally:
            await nc.close()
        assert "Traceback" not in limiter.logs() and limiter.process.poll() is None
    finally:
        if limiter is not None:
            limiter.stop()
        down.start()  # the cluster whole again, for any test after
