"""The limiter on a real Redis Cluster (six redis-server on loopback: three masters, three replicas)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter

import nats
import pytest
from redis.crc import key_slot

from services.limiter.policy import subject_key
from shared.events import LimitDecision, LimitRequest
from tests.conftest import start_service, unique
from tests.servers import nats_server, redis_cluster

pytestmark = pytest.mark.integration


def masters_by_slot_range(port: int) -> list[tuple[int, int, int]]:
    """(first slot, last slot, master port) of each master, from CLUSTER SLOTS."""
    out = subprocess.run(["redis-cli", "-p", str(port), "--json", "cluster", "slots"], capture_output=True,
                         text=True, check=True).stdout
    return [(entry[0], entry[1], entry[2][1]) for entry in json.loads(out)]


def callers_on_every_master(port: int) -> dict[int, str]:
    """One user per master: their hash tags fall in slots that different masters serve."""
    ranges = masters_by_slot_range(port)
    chosen: dict[int, str] = {}
    while len(chosen) < len(ranges):
        user = unique("rc")
        slot = key_slot(subject_key(user, None).encode())
        master = next(m for first, last, m in ranges if first <= slot <= last)
        chosen.setdefault(master, user)
    return chosen


@pytest.fixture(scope="module")
def cluster():
    nodes, url = redis_cluster()
    yield nodes, url
    for node in nodes:
        node.stop()


async def test_three_limiters_on_the_cluster_grant_each_caller_exactly_its_limit(cluster, base_env):
    nodes, url = cluster
    bus, bus_url = nats_server()  # a bus of its own: only these limiters answer llm.request
    env = {**base_env, "NATS_URL": bus_url, "REDIS_URL": url, "REDIS_CLUSTER": "true",
           "LIMITER_REDIS_TIMEOUT_S": "2"}  # 1,500 requests at once on two shared cores: no spurious timeouts
    limiters = [start_service("limiter", env, "LIMITER_PORT") for _ in range(3)]
    nc = await nats.connect(bus_url)
    try:
        users = callers_on_every_master(nodes[0].port)
        assert len(users) == 3

        async def ask(user: str) -> LimitDecision:
            request = LimitRequest(request_id=unique("req"), user_id=user, tier="pro", model="gpt-4o-mini",
                                   max_tokens=8)
            reply = await nc.request("llm.request", request.model_dump_json().encode(), timeout=20)
            return LimitDecision.model_validate_json(reply.data)

        decisions = await asyncio.gather(*(ask(user) for user in users.values() for _ in range(500)))
    finally:
        await nc.close()
        for limiter in limiters:
            limiter.stop()
        bus.stop()
    granted = Counter(d.tier for d in decisions if d.allowed)  # every caller is pro
    per_user = Counter()
    for user, decision in zip([u for u in users.values() for _ in range(500)], decisions, strict=True):
        per_user[user] += decision.allowed
    assert set(per_user.values()) == {100}, per_user  # pro: 100 an hour, whatever the replica or the master
    assert granted["pro"] == 300
    assert not [d for d in decisions if d.limited_by == "unavailable"]

