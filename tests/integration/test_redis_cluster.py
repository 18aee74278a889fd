"""The limiter on a real Redis Cluster (six redis-server on loopback: three masters, three replicas):
exact grants from several replicas, team budgets decided in their team's slot, settlement batched across
masters, and a master lost mid-traffic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from decimal import Decimal

import nats
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from services.limiter.limiter import Limiter
from services.limiter.policy import LimitPolicy, subject_key
from services.limiter.redis_limiter_store import RedisLimiterStore
from shared.events import LimitDecision, LimitRequest, LlmCompleted
from shared.policy import DEFAULT_MODELS, DEFAULT_TIERS
from shared.pricing import PriceCatalog
from tests.conftest import start_service, start_services, unique
from tests.servers import ProcessServer, nats_server, redis_cluster, stop_all
from tests.support.polling import eventually, wait_for

pytestmark = pytest.mark.system


def masters_by_slot_range(port: int) -> list[tuple[int, int, int]]:
    """(first slot, last slot, master port) of each master, from CLUSTER SLOTS."""
    out = subprocess.run(["redis-cli", "-p", str(port), "--json", "cluster", "slots"], capture_output=True,
                         text=True, check=True).stdout
    return [(entry[0], entry[1], entry[2][1]) for entry in json.loads(out)]


def master_of(user: str, ranges: list[tuple[int, int, int]]) -> int:
    slot = key_slot(subject_key(user, None).encode())
    return next(m for first, last, m in ranges if first <= slot <= last)


def callers_on_every_master(port: int) -> dict[int, str]:
    """One user per master: their hash tags fall in slots that different masters serve."""
    ranges = masters_by_slot_range(port)
    chosen: dict[int, str] = {}
    while len(chosen) < len(ranges):
        user = unique("rc")
        chosen.setdefault(master_of(user, ranges), user)
    return chosen


def caller_on(master: int, seed_port: int) -> str:
    ranges = masters_by_slot_range(seed_port)
    while master_of(user := unique("rc"), ranges) != master:
        pass
    return user


def cluster_nodes(port: int) -> list[list[str]]:
    """CLUSTER NODES as seen by one node: id, address, flags, master id, ..."""
    out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "nodes"], capture_output=True, text=True,
                         timeout=5).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def replica_of(master_port: int) -> int:
    rows = cluster_nodes(master_port)
    master_id = next(row[0] for row in rows if row[1].startswith(f"127.0.0.1:{master_port}@"))
    return next(int(row[1].split(":")[1].split("@")[0]) for row in rows if row[3] == master_id)


def ask_for(user: str) -> LimitRequest:
    return LimitRequest(request_id=unique("req"), user_id=user, tier="pro", model="gpt-4o-mini", max_tokens=8)


def redis_cli(port: int, *command: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True,
                          timeout=5).stdout


def whole(nodes: list[ProcessServer]) -> bool:
    """Every node sees the slots covered, three masters and three replicas and no node failed; every
    replica has synced with its master."""
    def sees_it_whole(port: int) -> bool:
        flags = [row[2] for row in cluster_nodes(port)]
        return ("cluster_state:ok" in redis_cli(port, "cluster", "info") and not [f for f in flags if "fail" in f]
                and sum("master" in f for f in flags) == 3 and sum("slave" in f for f in flags) == 3)

    return all(sees_it_whole(node.port) for node in nodes) and all(
        "master_link_status:up" in info for info in (redis_cli(node.port, "info", "replication") for node in nodes)
        if "role:slave" in info)


@pytest.fixture(scope="module")
def cluster_of_six():
    nodes, url = redis_cluster()
    yield nodes, url
    stop_all(nodes)


@pytest.fixture
def cluster(cluster_of_six):
    """The module's cluster as every test starts on it: all six nodes up, three masters each with a synced
    replica (a test before may have killed a master: it comes back as its successor's replica)."""
    nodes, url = cluster_of_six
    dead = [node for node in nodes if node.process is None or node.process.poll() is not None]
    if dead:
        for node in nodes:
            if node not in dead:  # the master that syncs a returning replica starts at once, not after 5 s
                redis_cli(node.port, "config", "set", "repl-diskless-sync-delay", "0")
        for node in dead:
            node.start()
    wait_for(lambda: whole(nodes), "the redis cluster to recover from the test before", 60)
    return nodes, url


async def test_three_limiters_on_the_cluster_grant_each_caller_exactly_its_limit(cluster, base_env):
    nodes, url = cluster
    bus, bus_url = nats_server()  # a bus of its own: only these limiters answer llm.request
    env = {**base_env, "NATS_URL": bus_url, "REDIS_URL": url, "REDIS_CLUSTER": "true",
           "LIMITER_REDIS_TIMEOUT_S": "2"}  # 1,500 requests at once on two shared cores: no spurious timeouts
    limiters = start_services(*[("limiter", env, "LIMITER_PORT")] * 3)
    nc = await nats.connect(bus_url)
    try:
        users = callers_on_every_master(nodes[0].port)
        assert len(users) == 3

        async def ask(user: str) -> LimitDecision:
            reply = await nc.request("llm.request", ask_for(user).model_dump_json().encode(), timeout=20)
            return LimitDecision.model_validate_json(reply.data)

        decisions = await asyncio.gather(*(ask(user) for user in users.values() for _ in range(500)))
    finally:
        await nc.close()
        stop_all([*limiters, bus])
    granted = Counter(d.tier for d in decisions if d.allowed)  # every caller is pro
    per_user = Counter()
    for user, decision in zip([u for u in users.values() for _ in range(500)], decisions, strict=True):
        per_user[user] += decision.allowed
    assert set(per_user.values()) == {100}, per_user  # pro: 100 an hour, whatever the replica or the master
    assert granted["pro"] == 300
    assert not [d for d in decisions if d.limited_by == "unavailable"]



class NoViolations:
    async def publish(self, violation) -> None:
        pass


def completed(request: LimitRequest, tokens: int) -> LlmCompleted:
    return LlmCompleted(request_id=request.request_id, user_id=request.user_id, tier=request.tier,
                        model=request.model, provider="together_ai", endpoint="/v1/chat/completions", prompt_tokens=tokens, completion_tokens=0,
                        total_tokens=tokens, cost=Decimal("0"), success=True, latency_ms=1)


async def test_settlement_reaches_every_master_in_one_batch(cluster):
    nodes, url = cluster
    client = RedisCluster.from_url(url)
    await client.initialize()
    limiter = Limiter(LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, 256, 5000), RedisLimiterStore(client, 900), "closed",
                      NoViolations())
    users = list(callers_on_every_master(nodes[0].port).values())
    try:
        for _ in range(2):  # the first batch finds the settle script unknown to every master; the second not
            requests = [ask_for(user) for user in users]
            assert all([(await limiter.decide(r)).allowed for r in requests])
            batch = [completed(r, tokens=3) for r in requests]
            assert await limiter.settle(batch) == 3
            assert await limiter.settle(batch) == 0  # settled once, on every master
    finally:
        await client.aclose()


async def test_a_teams_budget_is_exact_on_the_cluster_and_settles_every_scope_on_its_master(cluster):
    """Three teams whose tags fall on three masters, each shared by three users with key, user and team
    budgets: one script per call decides them all in the team's slot; settlement of scoped reservations
    reaches every master, once."""
    from services.limiter.scopes import LimitsBook, tag_of
    from shared.limits import Budget, ScopeLimits

    nodes, url = cluster
    ranges = masters_by_slot_range(nodes[0].port)
    teams: dict[int, str] = {}
    while len(teams) < len(ranges):
        team = unique("team")
        slot = key_slot(("cw:{team:" + team + "}").encode())
        teams.setdefault(next(m for first, last, m in ranges if first <= slot <= last), team)
    members = {team: [unique("u") for _ in range(3)] for team in teams.values()}
    day = Budget(usd=Decimal("0.0012"), period="day", timezone="America/New_York")  # two reservations
    limits = {("team", team): ScopeLimits(budgets=(day,)) for team in teams.values()}
    limits.update({("user", user): ScopeLimits(budgets=(Budget(usd=Decimal(1), rolling="1h"),), requests=50)
                   for users in members.values() for user in users})
    book = LimitsBook(limits=limits, teams={user: team for team, users in members.items() for user in users})

    class BookOnly:
        async def load(self):
            return book

        async def spend(self, asks):
            return [{} for _ in asks]

    client = RedisCluster.from_url(url)
    await client.initialize()
    limiter = Limiter(LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, 256, 5000),
                      RedisLimiterStore(client, 900), "closed", NoViolations(), BookOnly())
    try:
        await limiter.reload()
        asked = [LimitRequest(request_id=unique("req"), user_id=users[i % 3], tier="enterprise", model="gpt-4o-mini",
                              max_tokens=1000) for users in members.values() for i in range(12)]
        decisions = await asyncio.gather(*(limiter.decide(request) for request in asked))
        granted = Counter(d.team_id for d in decisions if d.allowed)
        assert granted == dict.fromkeys(teams.values(), 2)  # $0.0006 a reservation at gpt-4o-mini's $0.60/1M
        assert {d.scope for d in decisions if not d.allowed} == {"team"}
        assert {tag_of(limiter.policy.plan(r, book).key) for r in asked} == {
            "cw:{team:" + team + "}" for team in teams.values()}
        done = [LlmCompleted(request_id=r.request_id, user_id=r.user_id, team_id=d.team_id, model=r.model,
                             provider="openai", endpoint="/v1/chat/completions", prompt_tokens=0,
                             completion_tokens=100, success=True, latency_ms=1)
                for r, d in zip(asked, decisions, strict=True) if d.allowed]
        assert await limiter.settle(done) == 6
        assert await limiter.settle(done) == 0
        for team in teams.values():
            counter = await client.hgetall("cw:{team:" + team + "}:L:t:" + team + ":b:day@America/New_York")
            assert sum(int(v) for v in counter.values()) == 2 * 60_000  # 100 tokens at $0.60/1M, twice
    finally:
        await client.aclose()


# Last in the module: the master it kills is only started again (as a replica) by a test after it.
async def test_losing_a_master_fails_closed_quickly_and_exact_limits_return_after_promotion(cluster, base_env):
    nodes, url = cluster
    bus, bus_url = nats_server()
    limiter = start_service("limiter", {**base_env, "NATS_URL": bus_url, "REDIS_URL": url, "REDIS_CLUSTER": "true",
                                        "LIMITER_REDIS_TIMEOUT_S": "0.5", "LIMITER_FAILURE_MODE": "closed"},
                            "LIMITER_PORT")
    nc = await nats.connect(bus_url)
    try:
        victim_port = masters_by_slot_range(nodes[0].port)[0][2]
        victim = next(node for node in nodes if node.port == victim_port)
        promoted = replica_of(victim.port)
        survivor = next(node.port for node in nodes if node.port not in (victim.port, promoted))
        user = caller_on(victim.port, survivor)

        async def ask(who: str) -> tuple[LimitDecision, float]:
            started = time.monotonic()
            reply = await nc.request("llm.request", ask_for(who).model_dump_json().encode(), timeout=10)
            return LimitDecision.model_validate_json(reply.data), time.monotonic() - started

        assert all([(await ask(user))[0].allowed for _ in range(10)])
        victim.kill()

        def promoted_and_serving() -> bool:
            rows = {row[1].split("@")[0]: row[2] for row in cluster_nodes(survivor)}
            info = subprocess.run(["redis-cli", "-p", str(survivor), "cluster", "info"], capture_output=True,
                                  text=True, timeout=5).stdout
            return "master" in rows.get(f"127.0.0.1:{promoted}", "") and "cluster_state:ok" in info

        during: list[tuple[LimitDecision, float]] = []
        deadline = time.monotonic() + 60
        while not promoted_and_serving():
            assert time.monotonic() < deadline, "the replica was not promoted within 60 s"
            during.append(await ask(user))
            await asyncio.sleep(0.1)
        unavailable = [d for d, _ in during if d.limited_by == "unavailable"]
        assert unavailable, "no decision was taken while the master was down"
        assert not [d for d in unavailable if d.allowed]  # failing closed
        assert max(seconds for _, seconds in during) < 3, "a decision hung while the master was down"

        async def decisions_exact_again() -> bool:
            return (await ask(user))[0].limited_by != "unavailable"

        assert await eventually(decisions_exact_again, 30), "the limiter did not follow the promoted replica"
        fresh = caller_on(promoted, survivor)
        decisions = await asyncio.gather(*(ask(fresh) for _ in range(150)))
        assert sum(d.allowed for d, _ in decisions) == 100  # pro: exactly 100 an hour on the promoted master
        assert limiter.process.poll() is None  # never crashed
    finally:
        await nc.close()
        stop_all([limiter, bus])
