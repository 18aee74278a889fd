"""The limits of keys, users and teams on a real Redis: one script decides and reserves every scope of a
call, a budget holds under concurrency, a denial counts nothing anywhere, settlement adjusts every
counter the reservation touched exactly once, and a new counter starts from the ledger's spend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis

from services.limiter.limiter import Limiter
from services.limiter.policy import LimitPolicy
from services.limiter.redis_limiter_store import RedisLimiterStore
from services.limiter.scopes import LimitsBook
from shared.events import LimitRequest, LlmCompleted
from shared.limits import Budget, ScopeLimits
from shared.policy import DEFAULT_MODELS, DEFAULT_TIERS
from shared.pricing import PriceCatalog
from tests.conftest import unique
from tests.integration.helpers import CHEAP_MODEL

pytestmark = pytest.mark.adapter

# CHEAP_MODEL may fall back to gpt-4o-mini ($0.60 per 1M output): 1000 tokens reserve $0.0006.
RESERVED_NANO = 600_000


class NoViolations:
    async def publish(self, violation) -> None:
        pass


class BookOnly:
    """The limits in memory (the Postgres source is tested with the services); the ledger spent `spent`."""

    def __init__(self, book: LimitsBook, spent: dict | None = None) -> None:
        self.book, self.spent = book, spent or {}

    async def load(self) -> LimitsBook:
        return self.book

    async def spend(self, asks):
        return [dict(self.spent.get((a.scope, a.scope_id), {})) for a in asks]


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def limiter_with(redis, book: LimitsBook, spent: dict | None = None) -> Limiter:
    policy = LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, 256, 5000)
    limiter = Limiter(policy, RedisLimiterStore(redis, 900), "closed", NoViolations(), BookOnly(book, spent))
    await limiter.reload()
    return limiter


def ask(user: str, key: int | None = None) -> LimitRequest:
    return LimitRequest(request_id=unique("req"), user_id=user, tier="enterprise", model=CHEAP_MODEL, max_tokens=1000,
                        api_key_id=key)


def completed(request: LimitRequest, team: str | None, completion: int) -> LlmCompleted:
    return LlmCompleted(request_id=request.request_id, user_id=request.user_id, team_id=team, provider="together_ai",
                        model=CHEAP_MODEL, prompt_tokens=0, completion_tokens=completion, endpoint="/v1/chat/completions",
                        success=True, latency_ms=1, api_key_id=request.api_key_id)


async def counter(redis, key: str) -> int:
    return sum(int(v) for v in (await redis.hgetall(key)).values())


async def test_a_team_budget_shared_by_three_users_holds_under_concurrency(redis):
    team, users = unique("team"), [unique("u") for _ in range(3)]
    budget = Budget(usd=Decimal("0.006"), period="day", timezone="Europe/Berlin")  # ten reservations exactly
    limiter = await limiter_with(redis, LimitsBook(limits={("team", team): ScopeLimits(budgets=(budget,))},
                                                   teams=dict.fromkeys(users, team)))
    decisions = await asyncio.gather(*(limiter.decide(ask(users[i % 3])) for i in range(60)))
    granted = [d for d in decisions if d.allowed]
    assert len(granted) == 10 and {d.team_id for d in decisions} == {team}
    denied = [d for d in decisions if not d.allowed]
    assert {(d.scope, d.scope_id, d.limited_by, d.period, d.timezone) for d in denied} == {
        ("team", team, "budget", "day", "Europe/Berlin")}
    assert {d.budget_usd for d in denied} == {Decimal("0.006")} and {d.spent_usd for d in denied} == {Decimal("0.006")}
    team_counter = "cw:{team:" + team + "}:L:t:" + team + ":b:day@Europe/Berlin"
    assert await counter(redis, team_counter) == 10 * RESERVED_NANO
    resets = {d.resets_at for d in denied}
    assert len(resets) == 1 and resets.pop().astimezone(ZoneInfo("Europe/Berlin")).hour == 0


async def test_a_key_budget_under_a_larger_team_budget_stops_the_key_and_not_its_teammates(redis):
    team, alice, bob = unique("team"), unique("alice"), unique("bob")
    book = LimitsBook(limits={("key", "901"): ScopeLimits(budgets=(Budget(usd=Decimal("0.0012"), period="day"),)),
                              ("team", team): ScopeLimits(budgets=(Budget(usd=Decimal(1), period="month"),))},
                      teams={alice: team, bob: team}, key_users={901: alice})
    limiter = await limiter_with(redis, book)
    alice_calls = [await limiter.decide(ask(alice, key=901)) for _ in range(3)]
    assert [d.allowed for d in alice_calls] == [True, True, False] and alice_calls[2].scope == "key"
    assert (await limiter.decide(ask(alice, key=902))).allowed  # her other key has no budget of its own
    assert all([(await limiter.decide(ask(bob, key=903))).allowed for _ in range(5)])


async def test_a_denial_counts_nothing_anywhere_and_settlement_adjusts_every_counter_once(redis):
    team, user = unique("team"), unique("u")
    book = LimitsBook(limits={("user", user): ScopeLimits(budgets=(Budget(usd=Decimal("0.0012"), period="week"),),
                                                          tokens_per_minute=2500, requests=10, window_s=60),
                              ("team", team): ScopeLimits(budgets=(Budget(usd=Decimal(1), rolling="1h"),))},
                      teams={user: team})
    limiter = await limiter_with(redis, book)
    tag = "cw:{team:" + team + "}"
    names = {"user_budget": f"{tag}:L:u:{user}:b:week@UTC", "user_tokens": f"{tag}:L:u:{user}:tok",
             "team_budget": f"{tag}:L:t:{team}:b:rolling:1h", "tier_usd": f"{tag}:u:{user}:usd"}
    first, second, third = ask(user), ask(user), ask(user)
    assert (await limiter.decide(first)).allowed and (await limiter.decide(second)).allowed
    before = {name: await counter(redis, key) for name, key in names.items()}
    assert before == {"user_budget": 2 * RESERVED_NANO, "user_tokens": 2000, "team_budget": 2 * RESERVED_NANO,
                      "tier_usd": 2 * RESERVED_NANO}
    denied = await limiter.decide(third)
    assert (denied.allowed, denied.scope, denied.limited_by) == (False, "user", "tokens")
    assert {name: await counter(redis, key) for name, key in names.items()} == before
    assert await redis.zcard(f"{tag}:L:u:{user}:req") == 2

    settled = [completed(first, team, completion=100), completed(second, team, completion=250)]
    assert await limiter.settle(settled) == 2
    assert await limiter.settle(settled) == 0  # once
    actual = 100 * 200 + 250 * 200  # Llama 3 8B's own $0.20 per 1M
    assert {name: await counter(redis, key) for name, key in names.items()} == {
        "user_budget": actual, "user_tokens": 350, "team_budget": actual, "tier_usd": actual}
    assert (await limiter.decide(third)).allowed


async def test_a_new_budget_starts_from_what_the_ledger_recorded_in_its_period(redis):
    team, user = unique("team"), unique("u")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spent = {("team", team): {today: Decimal("0.0010")}}
    book = LimitsBook(limits={("team", team): ScopeLimits(budgets=(Budget(usd=Decimal("0.0022"), period="day"),))},
                      teams={user: team})
    limiter = await limiter_with(redis, book, spent)
    # $0.0010 already spent today: two reservations of $0.0006 fit in $0.0022, a third does not
    assert [(await limiter.decide(ask(user))).allowed for _ in range(3)] == [True, True, False]
    await limiter.reload()  # a reload does not start the counter over
    assert not (await limiter.decide(ask(user))).allowed
