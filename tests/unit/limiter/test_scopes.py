"""A caller's own limits in the limiter's plan: which counters a key's, user's and team's limits add, that
every key of one decision shares one Redis hash slot, what a denial by each says, what settles where,
and what a new counter starts from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis.crc import key_slot

from services.limiter.policy import CounterReading, LimitPolicy
from services.limiter.redis_limiter_store import caller_keys
from services.limiter.scopes import (
    BudgetCounter,
    LimitsBook,
    budget_counters,
    budget_seed,
    caller_base,
    moved_users,
    subject_key,
    tag_of,
    tier_day_seed,
)
from shared.events import LimitRequest, LlmCompleted
from shared.limits import Budget, ScopeLimits
from shared.policy import DEFAULT_MODELS, DEFAULT_TIERS
from shared.pricing import PriceCatalog

NOW = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)  # the day Berlin springs forward
MODEL = "meta-llama/Llama-3-8b-chat-hf"
TEAM_MONTH = Budget(usd=Decimal("500"), period="month", timezone="Europe/Berlin")
KEY_DAY = Budget(usd=Decimal("0.002"), period="day")
USER_ROLLING = Budget(usd=Decimal("5"), rolling="24h")


def policy() -> LimitPolicy:
    return LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, 256, 5000, clock=lambda: NOW)


def book() -> LimitsBook:
    return LimitsBook(
        limits={("key", "17"): ScopeLimits(budgets=(KEY_DAY,), requests=5, window_s=60, models=(MODEL,)),
                ("user", "alice"): ScopeLimits(budgets=(USER_ROLLING,), tokens_per_minute=9000),
                ("team", "research"): ScopeLimits(budgets=(TEAM_MONTH,), soft=(Decimal("0.8"),))},
        teams={"alice": "research", "bob": "research"}, key_users={17: "alice"})


def ask(user: str | None = "alice", key: int | None = 17, model: str = MODEL) -> LimitRequest:
    return LimitRequest(request_id="r1", user_id=user, client_ip="192.0.2.1", tier="pro", model=model,
                        max_tokens=100, api_key_id=key)


def test_a_caller_with_no_limits_of_its_own_is_planned_exactly_as_before():
    plain = policy().plan(ask(user="carol", key=99), book())
    assert plain == policy().plan(ask(user="carol", key=99))
    assert (plain.key, plain.checks, plain.team_id) == (subject_key("carol", None), (), None)


def test_a_team_members_counters_all_live_in_the_teams_hash_slot():
    plan = policy().plan(ask(), book())
    assert plan.team_id == "research" and plan.key == "cw:{team:research}:u:alice"
    assert [(c.scope, c.kind) for c in plan.checks] == [("key", "requests"), ("key", "calendar"),
                                                         ("user", "tokens"), ("user", "rolling"),
                                                         ("team", "calendar")]
    tag = tag_of(plan.key)
    keys = [*caller_keys(plan.key, plan.request_id).values(), *(c.key(tag) for c in plan.checks)]
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"cw:{team:research}")}
    assert len(set(keys)) == len(keys)  # no scope counter is a tier counter
    bob = policy().plan(ask(user="bob", key=None), book())
    assert tag_of(bob.key) == tag and [c.scope for c in bob.checks] == ["team"]


def test_calendar_checks_carry_this_period_and_the_next_for_redis_clock_to_choose():
    team = policy().plan(ask(), book()).checks[-1]
    start, end, following = team.params
    assert (datetime.fromtimestamp(start / 1000, UTC), datetime.fromtimestamp(end / 1000, UTC)) == (
        datetime(2026, 2, 28, 23, tzinfo=UTC), datetime(2026, 3, 31, 22, tzinfo=UTC))
    assert datetime.fromtimestamp(following / 1000, UTC) == datetime(2026, 4, 30, 22, tzinfo=UTC)
    assert team.limit == 500 * 10**9


def test_a_model_outside_a_scopes_allow_list_is_refused_before_anything_is_counted():
    plan = policy().plan(ask(model="gpt-4o"), book())
    assert plan.model_refused_by == ("key", "17")
    refusal = policy().model_refusal(ask(model="gpt-4o"), plan)
    assert (refusal.allowed, refusal.limited_by, refusal.scope, refusal.reserved_usd) == (False, "model", "key", 0)
    assert refusal.reason == "Key 17 may not call the model gpt-4o"


def test_a_budget_denial_names_the_scope_its_period_spend_and_reset():
    p = policy()
    plan = p.plan(ask(), book())
    now_ms = int(NOW.timestamp() * 1000)
    reset_ms = plan.checks[-1].params[1]
    reading = CounterReading(allowed=False, limited_by="budget", limit=500 * 10**9, remaining=10**7,
                             reset_ms=reset_ms, now_ms=now_ms, check=5, used=499_990_000_000)
    decision = p.decision(ask(), plan, reading)
    assert (decision.scope, decision.scope_id, decision.period, decision.timezone) == (
        "team", "research", "month", "Europe/Berlin")
    assert (decision.budget_usd, decision.spent_usd) == (Decimal("500"), Decimal("499.99"))
    assert decision.resets_at == datetime(2026, 3, 31, 22, tzinfo=UTC)
    assert decision.retry_after_s == (decision.resets_at - NOW).total_seconds()
    assert (decision.limit, decision.remaining, decision.window_s) == (50_000, 1, 31 * 86_400 - 3600)
    assert decision.reason == ("Team research's LLM budget of $500 per month (Europe/Berlin) is spent until "
                               "2026-03-31T22:00:00Z.")


def test_a_request_window_denial_names_its_scope():
    p = policy()
    plan = p.plan(ask(), book())
    now_ms = int(NOW.timestamp() * 1000)
    reading = CounterReading(allowed=False, limited_by="requests", limit=5, remaining=0, reset_ms=now_ms + 30_000,
                             now_ms=now_ms, check=1, used=5)
    decision = p.decision(ask(), plan, reading)
    assert (decision.scope, decision.window_s, decision.retry_after_s, decision.budget_usd) == ("key", 60, 30, None)
    assert decision.reason == "Key 17 limit: 5 LLM requests per minute."


def test_a_call_settles_under_the_team_its_decision_counted_it_for():
    event = LlmCompleted(request_id="r1", user_id="alice", provider="together_ai", model=MODEL, prompt_tokens=10,
                         completion_tokens=5, endpoint="/v1/chat/completions", success=True, latency_ms=3,
                         team_id="research")
    assert policy().settlement(event)[0] == "cw:{team:research}:u:alice"
    upstream = event.model_copy(update={"team_id": None})  # did not copy the decision's team: its user's now
    assert policy().settlement(upstream, book())[0] == "cw:{team:research}:u:alice"
    assert policy().settlement(upstream)[0] == "cw:{user:alice}"


def test_counters_are_named_by_scope_and_period_under_their_tag():
    counters = budget_counters(book())
    assert sorted(counters) == ["cw:{team:research}:L:k:17:b:day@UTC",
                                "cw:{team:research}:L:t:research:b:month@Europe/Berlin",
                                "cw:{team:research}:L:u:alice:b:rolling:24h"]
    orphan = LimitsBook(limits={("key", "5"): ScopeLimits(budgets=(KEY_DAY,))})  # a key nobody owns any more
    assert budget_counters(orphan) == {}
    assert caller_base("a:b}", None, "t") == "cw:{team:t}:u:a%3Ab%7D"


def test_a_calendar_counter_starts_from_the_ledgers_spend_in_its_period():
    counter = BudgetCounter("k", "team", "research", TEAM_MONTH)
    spent = {datetime(2026, 2, 28, 22, 45, tzinfo=UTC): Decimal("1"),  # February in Berlin
             datetime(2026, 2, 28, 23, 0, tzinfo=UTC): Decimal("2.5"), datetime(2026, 3, 29, 11, 45, tzinfo=UTC):
             Decimal("0.000000001")}
    seed = budget_seed(counter, spent, NOW)
    assert seed.fields == {int(datetime(2026, 2, 28, 23, tzinfo=UTC).timestamp() * 1000): 2_500_000_001}
    assert not seed.only_if_absent


def test_a_rolling_counter_holds_each_quarters_spend_until_the_quarter_has_left_the_window():
    counter = BudgetCounter("k", "user", "alice", Budget(usd=Decimal(5), rolling="1h"))
    seed = budget_seed(counter, {datetime(2026, 3, 29, 11, 15, tzinfo=UTC): Decimal("0.5"),
                                 datetime(2026, 3, 29, 11, 45, tzinfo=UTC): Decimal("0.25")}, NOW)
    minute = 60_000
    assert seed.fields == {int(datetime(2026, 3, 29, 11, 29, tzinfo=UTC).timestamp() * 1000) // minute: 500_000_000,
                           int(datetime(2026, 3, 29, 11, 59, tzinfo=UTC).timestamp() * 1000) // minute: 250_000_000}
    assert seed.only_if_absent


def test_a_user_who_changes_team_keeps_todays_tier_spend_under_the_new_tag():
    old, new = book(), LimitsBook(teams={"alice": "support", "carol": "research"})
    assert moved_users(old, new) == ["alice", "bob", "carol"]
    seed = tier_day_seed("alice", "support", Decimal("0.75"), NOW + timedelta(hours=1))
    assert seed.key == "cw:{team:support}:u:alice:usd" and list(seed.fields.values()) == [750_000_000]
