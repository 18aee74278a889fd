"""The limiter use case with in-memory fakes of its ports: what it decides, announces and settles."""

from __future__ import annotations

from collections.abc import Sequence

from services.limiter.limiter import Limiter, StorageUnavailable
from services.limiter.policy import CounterReading, LimitPlan, LimitPolicy
from shared.events import LimitRequest, LimitViolation, LlmCompleted
from shared.policy import DEFAULT_MODELS, DEFAULT_TIERS
from shared.pricing import PriceCatalog

NOW_MS = 1_700_000_000_000


class FakeStore:
    """Counts requests per caller in memory; `down` makes it fail like an unreachable store."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.granted: dict[str, list[str]] = {}
        self.settled: list[tuple[str, str, int, int]] = []

    async def check_and_reserve(self, plan: LimitPlan) -> CounterReading:
        if self.down:
            raise StorageUnavailable("ConnectionError")
        granted = self.granted.setdefault(plan.key, [])
        allowed = plan.request_id in granted or len(granted) < plan.requests_limit
        if allowed and plan.request_id not in granted:
            granted.append(plan.request_id)
        return CounterReading(allowed=allowed, limited_by=None if allowed else "requests",
                              limit=plan.requests_limit, remaining=plan.requests_limit - len(granted),
                              reset_ms=NOW_MS + plan.window_ms, now_ms=NOW_MS)

    async def settle_many(self, settlements: Sequence[tuple[str, str, int, int]]) -> int:
        self.settled.extend(settlements)
        return len(settlements)


class FakeViolations:
    def __init__(self) -> None:
        self.published: list[LimitViolation] = []

    async def publish(self, violation: LimitViolation) -> None:
        self.published.append(violation)


def limiter(store: FakeStore, violations: FakeViolations, mode: str = "closed") -> Limiter:
    policy = LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, default_max_tokens=256,
                         reservation_cap_tokens=5000)
    return Limiter(policy, store, mode, violations)  # type: ignore[arg-type]


def ask(n: int, user: str = "ann") -> LimitRequest:
    return LimitRequest(request_id=f"r{n}", user_id=user, tier="anonymous", model="gpt-4o-mini", max_tokens=8)


async def test_denials_are_announced_once_each_and_grants_are_not():
    store, violations = FakeStore(), FakeViolations()
    decisions = [await limiter(store, violations).decide(ask(n)) for n in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]  # anonymous: 3 an hour
    assert [(v.request_id, v.limited_by, v.limit) for v in violations.published] == [("r3", "requests", 3),
                                                                                   ("r4", "requests", 3)]


async def test_an_unreachable_store_fails_as_configured_and_announces_nothing():
    violations = FakeViolations()
    closed = await limiter(FakeStore(down=True), violations, "closed").decide(ask(1))
    opened = await limiter(FakeStore(down=True), violations, "open").decide(ask(2))
    assert (closed.allowed, closed.limited_by, opened.allowed) == (False, "unavailable", True)
    assert violations.published == []


async def test_settlement_skips_an_estimate_of_nothing():
    store = FakeStore()
    fields = dict(user_id="ann", provider="p", model="gpt-4o-mini", endpoint="/", success=True, latency_ms=1)
    settled = await limiter(store, FakeViolations()).settle([
        LlmCompleted(request_id="a", prompt_tokens=10, completion_tokens=5, **fields),
        LlmCompleted(request_id="b", prompt_tokens=0, completion_tokens=0, usage_source="estimated", **fields)])
    assert settled == 1 and [s[1:3] for s in store.settled] == [("a", 15)]
