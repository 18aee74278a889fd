"""Budgets and limits per key, user and team on the real services: the gateway, three limiter replicas, two
cost replicas and two notifiers on a bus of their own, set through the admin API. A team budget holds under
concurrency across the replicas and the ledger, Redis and GET .../spend agree; a key budget stops the key
and not its teammates; each soft threshold reaches the webhook once; a limit applies on every replica
within 2 s and its deletion restores the tier, and a limiter that missed the announcement reads it when its
bus connection comes back; a rolling window rolls over; a user who joins a team keeps what they spent; a
model outside an allow-list is refused before anything is reserved."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from redis.asyncio import Redis

from shared.pricing import to_nano_usd
from tests.conftest import start_service, start_services, unique
from tests.integration.helpers import CHEAP_MODEL, auth, new_key
from tests.integration.test_limiter import received_requests
from tests.servers import nats_server, stop_all
from tests.sinks import HttpSink
from tests.support.polling import eventually

pytestmark = pytest.mark.service

# Generous tiers: here the keys', users' and teams' own limits decide.
TIER = {"requests": 100_000, "window_s": 3600, "strict_requests": 100, "tokens_per_minute": 10**9,
        "daily_budget_usd": "100"}
MAX_TOKENS = 400  # a call reserves ~$0.00025 (gpt-4o-mini's $0.60/1M, the dearest route) and costs ~$0.00008
SETTLE_S = 2.0  # a limit applies on every limiter within this


@pytest.fixture(scope="module")
def stack(base_env, tmp_path_factory):
    config = tmp_path_factory.mktemp("budgets") / "costwarden.yaml"
    config.write_text(json.dumps({"tiers": {name: TIER for name in ("anonymous", "free", "pro", "enterprise")}}))
    bus, bus_url = nats_server()
    hook = HttpSink()
    env = {**base_env, "NATS_URL": bus_url, "COSTWARDEN_CONFIG": str(config), "PROVIDER_MAX_RETRIES": "0",
           "ALERT_WEBHOOK_URL": f"{hook.url}/hook/budgets", "NOTIFY_GROUP_WINDOW_S": "0.5"}
    services = start_services(*[("limiter", env, "LIMITER_PORT")] * 3, *[("cost", env, "COST_PORT")] * 2,
                              *[("notifier", env, "NOTIFIER_PORT")] * 2, ("api", env, "API_PORT"))
    yield {"api": services[-1], "limiters": services[:3], "hook": hook}
    stop_all(services)
    hook.stop()
    bus.stop()


@pytest.fixture(scope="module")
async def admin_key(database_url):
    return await new_key(database_url, unique("admin"), "enterprise", admin=True)


@pytest.fixture(scope="module", autouse=True)
async def rolling_budget_spent(stack, admin_key, database_url) -> dict:
    """The rolling-window test's first half, run as the module starts: a user spends a one-minute rolling
    budget (one-second buckets, the shortest window there is) and is refused. The minute then passes while
    the other tests run, and the test, last in the module, waits only for what is left of it."""
    user = unique("gil")
    key = await new_key(database_url, user, "pro")
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(admin_key)) as admin:
        await applied(await put_limits(admin, "users", user, {"budgets": [{"usd": "0.0003", "rolling": "1m"}]}))
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key)) as client:
        first = await client.post("/v1/chat/completions", json=body())
        denied = await client.post("/v1/chat/completions", json=body())
        refused_at, refused_wall = time.monotonic(), datetime.now(UTC)
        again = await client.post("/v1/chat/completions", json=body())
    return {"key": key, "first": first, "denied": denied, "again": again, "refused_at": refused_at,
            "refused_wall": refused_wall}


@pytest.fixture
async def admin(stack, admin_key):
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(admin_key)) as client:
        yield client


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def body(model: str = CHEAP_MODEL, max_tokens: int = MAX_TOKENS) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": max_tokens}


async def team_with_keys(admin: httpx.AsyncClient, members: int, limits: dict | None = None
                         ) -> tuple[str, list[str], list[dict]]:
    """A team of `members` new users, each with a pro key made through the admin API (naming the team)."""
    team, users = unique("team"), [unique("u") for _ in range(members)]
    made = await admin.post("/admin/teams", json={"team_id": team, "name": "Budget test", "members": users})
    assert made.status_code == 201, made.text
    keys = []
    for user in users:
        answer = await admin.post("/admin/keys", json={"user_id": user, "tier": "pro", "team_id": team})
        assert answer.status_code == 201 and answer.json()["team_id"] == team, answer.text
        keys.append(answer.json())
    if limits is not None:
        await put_limits(admin, "teams", team, limits)
    return team, users, keys


async def put_limits(admin: httpx.AsyncClient, collection: str, scope_id: str, limits: dict) -> float:
    """Set limits; returns when the admin API answered (the 2 s start then)."""
    answer = await admin.put(f"/admin/{collection}/{scope_id}/limits", json=limits)
    assert answer.status_code == 200, answer.text
    return time.monotonic()


async def applied(since: float) -> None:
    await asyncio.sleep(max(0.0, since + SETTLE_S - time.monotonic()))


async def recorded(db, request_ids: list[str]) -> list:
    async def all_rows():
        rows = await db.fetch("SELECT request_id, cost, team_id, api_key_id FROM llm_usage"
                              " WHERE request_id = ANY($1::text[])", request_ids)
        return rows if len(rows) == len(request_ids) else None

    rows = await eventually(all_rows, 30)
    assert rows, "the ledger did not record every admitted call"
    return rows


def today_ms() -> int:
    return int(datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


async def test_a_team_budget_shared_by_three_keys_of_three_users_holds_across_three_limiters(stack, admin, db, redis):
    team, _, keys = await team_with_keys(admin, 3)
    await applied(await put_limits(admin, "teams", team, {"budgets": [{"usd": "0.002", "period": "day"}]}))
    before = [received_requests(limiter) for limiter in stack["limiters"]]
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=60) as client:
        answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=body(),
                                                     headers=auth(keys[i % 3]["key"])) for i in range(60)))
    assert all(after > seen for after, seen in zip([received_requests(x) for x in stack["limiters"]], before,
                                                    strict=True)), "a limiter replica took no part"
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) == {200, 429} and statuses[200] >= 5, statuses
    denied = next(a for a in answers if a.status_code == 429).json()
    assert (denied["scope"], denied["scope_id"], denied["period"], denied["timezone"], denied["budget_usd"]) == (
        "team", team, "day", "UTC", "0.002")
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert denied["resets_at"] == tomorrow.strftime("%Y-%m-%dT%H:%M:%SZ") == denied["retryAfter"]
    assert Decimal(denied["spent_usd"]) + Decimal("0.00025") > Decimal("0.002")
    header = next(a for a in answers if a.status_code == 429).headers
    assert header["RateLimit-Policy"] == '"team-budget-day";q=0;w=86400'  # whole cents: the budget is 0.2 of one
    assert 0 < int(header["Retry-After"]) - (tomorrow - datetime.now(UTC)).total_seconds() <= 2

    admitted = [a.headers["x-request-id"] for a in answers if a.status_code == 200]
    rows = await recorded(db, admitted)
    assert {r["team_id"] for r in rows} == {team} and {r["api_key_id"] for r in rows} <= {k["id"] for k in keys}
    spent = sum((r["cost"] for r in rows), Decimal(0))
    assert spent <= Decimal("0.002")  # a grant reserved its worst case: nothing in flight can take it past
    counter = "cw:{team:" + team + "}:L:t:" + team + ":b:day@UTC"

    async def settled() -> bool:
        return int(await redis.hget(counter, today_ms()) or 0) == sum(to_nano_usd(r["cost"]) for r in rows)

    assert await eventually(settled, 20), "the limiter's counter does not agree with the ledger"
    report = (await admin.get(f"/admin/teams/{team}/spend")).json()
    [budget] = report["budgets"]
    assert Decimal(budget["spent_usd"]) == spent and Decimal(budget["remaining_usd"]) == Decimal("0.002") - spent
    assert budget["resets_at"].startswith(tomorrow.strftime("%Y-%m-%dT00:00:00"))
    assert Decimal(report["today_usd"]) == spent


async def test_a_key_budget_under_a_larger_team_budget_stops_the_key_and_not_its_teammates(stack, admin):
    team, _, keys = await team_with_keys(admin, 2, {"budgets": [{"usd": "1", "period": "month"}]})
    since = await put_limits(admin, "keys", str(keys[0]["id"]), {"budgets": [{"usd": "0.0003", "period": "day"}]})
    await applied(since)
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30) as client:
        own = [await client.post("/v1/chat/completions", json=body(), headers=auth(keys[0]["key"])) for _ in range(3)]
        teammate = [await client.post("/v1/chat/completions", json=body(), headers=auth(keys[1]["key"]))
                    for _ in range(4)]
    assert [a.status_code for a in own] == [200, 429, 429]
    assert (own[1].json()["scope"], own[1].json()["scope_id"]) == ("key", str(keys[0]["id"]))
    assert [a.status_code for a in teammate] == [200] * 4


async def test_soft_thresholds_reach_the_webhook_once_each_however_many_calls_cross_them(stack, admin):
    team, _, keys = await team_with_keys(admin, 3)
    limits = {"budgets": [{"usd": "0.001", "period": "day", "timezone": "America/New_York"}], "soft": ["0.5", "0.8"]}
    await applied(await put_limits(admin, "teams", team, limits))

    async def spent() -> Decimal:
        return Decimal((await admin.get(f"/admin/teams/{team}/spend")).json()["budgets"][0]["spent_usd"])

    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=60) as client:
        for _ in range(20):  # bursts across the three limiters and two cost replicas, until past 80 %
            await asyncio.gather(*(client.post("/v1/chat/completions", json=body(), headers=auth(keys[i % 3]["key"]))
                                   for i in range(12)))
            if await spent() >= Decimal("0.0008"):
                break
            await asyncio.sleep(0.5)  # the calls settle: their reservations give way to what they cost
    assert await spent() >= Decimal("0.0008")

    def received() -> Counter:
        keys_seen: Counter = Counter()
        for request in stack["hook"].delivered("/hook/budgets"):
            keys_seen.update(a["key"] for a in json.loads(request["body"])["alerts"] if a.get("scope") == f"team:{team}")
        return keys_seen

    assert await eventually(lambda: len(received()) == 2, 30), received()
    await asyncio.sleep(3)  # anything sent twice would have arrived by now
    seen = received()
    assert sorted(seen.values()) == [1, 1], seen
    alerts = {a["key"]: a for r in stack["hook"].delivered("/hook/budgets") for a in json.loads(r["body"])["alerts"]
              if a.get("scope") == f"team:{team}"}
    fifty = next(a for key, a in alerts.items() if key.endswith(":0.5"))
    assert fifty["severity"] == "warning" and Decimal(fifty["threshold"]) == Decimal("0.0005")
    assert f"team {team} has spent $" in fifty["text"] and "per day (America/New_York)" in fifty["text"]
    assert fifty["resets_at"] is not None and "it resets at" in fifty["text"]


async def test_a_limit_applies_within_2_s_on_every_replica_and_deleting_it_restores_the_tier(stack, admin,
                                                                                              database_url):
    user = unique("dana")
    key = await new_key(database_url, user, "pro")
    limiters = stack["limiters"]

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body(max_tokens=4),
                                                      headers=auth(key)) for _ in range(n)))

    await applied(await put_limits(admin, "users", user, {"requests": 3, "window_s": 3600}))
    before = [received_requests(limiter) for limiter in limiters]
    limited = await burst(30)
    assert all(received_requests(x) > seen for x, seen in zip(limiters, before, strict=True))
    assert [a.status_code for a in limited].count(200) == 3
    denial = next(a for a in limited if a.status_code == 429).json()
    assert (denial["scope"], denial["message"]) == ("user", f"User {user} limit: 3 LLM requests per hour.")
    assert (await admin.get(f"/admin/users/{user}/limits")).json()["limits"]["requests"] == 3

    deleted = await admin.delete(f"/admin/users/{user}/limits")
    assert deleted.status_code == 200
    await applied(time.monotonic())
    assert [a.status_code for a in await burst(30)] == [200] * 30  # the tier's 100,000 an hour again
    assert (await admin.get(f"/admin/users/{user}/limits")).status_code == 404


async def test_a_model_outside_the_allow_list_is_refused_with_403_before_anything_is_reserved(stack, admin, db,
                                                                                             database_url, redis):
    user = unique("erin")
    key = await new_key(database_url, user, "pro")
    key_id = (await db.fetchval("SELECT id FROM api_keys WHERE user_id = $1", user))
    await applied(await put_limits(admin, "keys", str(key_id), {"models": [CHEAP_MODEL]}))
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key)) as client:
        refused = await client.post("/v1/chat/completions", json=body(model="gpt-4o"))
        allowed = await client.post("/v1/chat/completions", json=body())
    assert refused.status_code == 403 and allowed.status_code == 200
    assert refused.json()["error"] == {"message": f"Key {key_id} may not call the model gpt-4o",
                                       "type": "permission_error", "param": "model", "code": "model_not_allowed"}
    assert await redis.zcard("cw:{user:" + user + "}:req") == 1  # only the allowed call was counted
    assert await redis.exists("cw:{user:" + user + "}:resv:" + refused.headers["x-request-id"]) == 0
    denial = await eventually(lambda: db.fetchrow("SELECT limited_by FROM rate_limit_violations WHERE request_id = $1",
                                                  refused.headers["x-request-id"]))
    assert denial["limited_by"] == "model"
    unknown = await admin.put(f"/admin/keys/{key_id}/limits", json={"models": ["no-such-model"]})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "models"


async def test_the_allow_list_holds_for_embeddings_as_for_chat(stack, admin, database_url):
    user = unique("gil")
    key = await new_key(database_url, user, "pro")
    await applied(await put_limits(admin, "users", user, {"models": ["text-embedding-3-small"]}))
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key)) as client:
        refused = await client.post("/v1/embeddings", json={"model": "BAAI/bge-large-en-v1.5", "input": "hello"})
        allowed = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hello"})
        chat = await client.post("/v1/chat/completions", json=body())
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert allowed.status_code == 200 and allowed.json()["data"][0]["embedding"]
    assert chat.status_code == 403 and chat.json()["error"]["code"] == "model_not_allowed"


async def test_a_user_who_joins_a_team_keeps_what_they_spent_in_the_period(stack, admin, db, database_url):
    user = unique("fay")
    key = await new_key(database_url, user, "pro")
    await applied(await put_limits(admin, "users", user, {"budgets": [{"usd": "0.0003", "period": "day"}]}))
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key)) as client:
        first = await client.post("/v1/chat/completions", json=body())
        assert first.status_code == 200
        await recorded(db, [first.headers["x-request-id"]])
        team = unique("team")
        made = await admin.post("/admin/teams", json={"team_id": team, "members": [user]})
        assert made.status_code == 201
        await applied(time.monotonic())
        # under the team's hash tag now, the user's budget still holds the first call's spend
        after = await client.post("/v1/chat/completions", json=body())
    assert after.status_code == 429 and (after.json()["scope"], after.json()["scope_id"]) == ("user", user)


async def test_a_limiter_that_missed_an_announcement_reads_the_limits_when_its_bus_connection_comes_back(
        base_env, db):
    """A limit written while no announcement could reach the limiter applies once its connection to the bus
    is back, not at its next periodic read a minute later."""
    import nats

    from shared.events import LimitDecision, LimitRequest

    bus, bus_url = nats_server()
    limiter = start_service("limiter", {**base_env, "NATS_URL": bus_url}, "LIMITER_PORT")
    user = unique("hal")
    nc = await nats.connect(bus_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)

    async def ask() -> LimitDecision | None:
        request = LimitRequest(request_id=unique("req"), user_id=user, tier="pro", model=CHEAP_MODEL, max_tokens=8)
        try:
            reply = await nc.request("llm.request", request.model_dump_json().encode(), timeout=2)
        except Exception:  # noqa: BLE001 - the bus or the limiter is not back yet
            return None
        return LimitDecision.model_validate_json(reply.data)

    try:
        await db.execute("INSERT INTO scope_limits (scope, scope_id, limits, updated_by) VALUES ('user', $1, $2,"
                         " 'test')", user, json.dumps({"requests": 1, "window_s": 3600}))  # no announcement
        assert [d.allowed for d in [await ask() for _ in range(2)] if d] == [True, True]
        restarted = time.monotonic()
        bus.stop()
        bus.start()

        async def limited() -> bool:
            decision = await ask()
            return decision is not None and decision.scope == "user" and not decision.allowed

        assert await eventually(limited, 30, 0.2)
        assert time.monotonic() - restarted < 30  # well before the minute of the periodic read
    finally:
        await nc.close()
        limiter.stop()
        bus.stop()


@pytest.mark.timeout(180)
async def test_a_rolling_window_rolls_over_on_the_real_services(stack, rolling_budget_spent):
    spent = rolling_budget_spent
    denied = spent["denied"]
    assert spent["first"].status_code == 200
    assert denied.status_code == 429 and denied.json()["rolling"] == "1m"
    resets = datetime.fromisoformat(denied.json()["resets_at"].replace("Z", "+00:00"))
    wait = (resets - spent["refused_wall"]).total_seconds()
    assert 55 <= wait <= 62 and int(denied.headers["Retry-After"]) == math.ceil(wait)
    assert spent["again"].status_code == 429
    await asyncio.sleep(max(0.0, spent["refused_at"] + wait + 0.5 - time.monotonic()))
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(spent["key"])) as client:
        assert (await client.post("/v1/chat/completions", json=body())).status_code == 200
