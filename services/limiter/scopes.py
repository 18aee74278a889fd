"""Which counters a caller's own limits (its key's, user's and team's) add to a decision, and where they
live in Redis. Pure: no I/O.

All of one caller's counters share one Redis hash tag, so that one script decides and reserves them all,
on Redis Cluster too: the caller's team when its user belongs to one (`cw:{team:research}`), else the
user (`cw:{user:alice}`), else the client IP. A user is in at most one team, and a key's team is its
user's, so a call's key, user and team counters are always in its tag. The tier's counters of a user
outside any team keep the keys they always had (`cw:{user:alice}:req`); a team member's are under the
team's tag (`cw:{team:research}:u:alice:req`). The counters of scope limits are under `<tag>:L:`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal
from urllib.parse import quote

from shared.budget_periods import ROLLING_BUCKETS, RollingBuckets, Span
from shared.limits import Budget, Scope, ScopeLimits
from shared.pricing import to_nano_usd

QUARTER_HOUR = timedelta(minutes=15)
SCOPE_LETTER: dict[Scope, str] = {"key": "k", "user": "u", "team": "t"}
# A calendar period is chosen by Redis' clock between the one that contained this process's clock this long
# ago and the next: a process whose clock runs ahead of Redis' by less still counts each call in its period.
CLOCK_LEEWAY = timedelta(minutes=5)
# A calendar counter outlives its period by a day, for the settlements of calls that were then in flight.
CALENDAR_GRACE_MS = 86_400_000


def subject_key(user_id: str | None, client_ip: str | None) -> str:
    """The hash tag of a caller outside any team: every key of its decisions lives in its slot."""
    raw = f"user:{user_id}" if user_id else f"ip:{client_ip or 'unknown'}"
    return "cw:{" + raw.replace("{", "(").replace("}", ")") + "}"


def team_tag(team_id: str) -> str:
    return "cw:{team:" + team_id.replace("{", "(").replace("}", ")") + "}"


def caller_base(user_id: str | None, client_ip: str | None, team_id: str | None) -> str:
    """Where a caller's tier counters and reservations live: `cw:{user:alice}` outside a team,
    `cw:{team:research}:u:alice` inside one."""
    if team_id and user_id:
        return f"{team_tag(team_id)}:u:{quote(user_id, safe='')}"
    return subject_key(user_id, client_ip)


def tag_of(base: str) -> str:
    """The hash-tagged prefix of a caller base (`cw:{team:research}`)."""
    return base[: base.index("}") + 1]


@dataclass(frozen=True)
class LimitsBook:
    """The limits administrators set, as the limiter holds them in memory: each scope's own limits, who
    is in which team, and the user of every key that has limits."""

    limits: Mapping[tuple[Scope, str], ScopeLimits] = field(default_factory=dict)
    teams: Mapping[str, str] = field(default_factory=dict)  # user -> team
    key_users: Mapping[int, str] = field(default_factory=dict)

    def team_of(self, user_id: str | None) -> str | None:
        return self.teams.get(user_id) if user_id else None

    def scopes_of(self, api_key_id: int | None, user_id: str | None, team_id: str | None
                  ) -> list[tuple[Scope, str, ScopeLimits]]:
        """The call's scopes that have limits, narrowest first: key, user, team."""
        if not self.limits:
            return []
        found = []
        for scope, scope_id in (("key", str(api_key_id) if api_key_id else None), ("user", user_id),
                                ("team", team_id)):
            limits = self.limits.get((scope, scope_id)) if scope_id else None  # type: ignore[arg-type]
            if limits is not None:
                found.append((scope, scope_id, limits))
        return found  # type: ignore[return-value]

    def tag_of_scope(self, scope: Scope, scope_id: str) -> str | None:
        """The hash tag a scope's counters live under; None for a key whose user is unknown."""
        if scope == "team":
            return team_tag(scope_id)
        user = self.key_users.get(int(scope_id)) if scope == "key" else scope_id
        if user is None:
            return None
        team = self.teams.get(user)
        return team_tag(team) if team else subject_key(user, None)


CheckKind = Literal["requests", "tokens", "calendar", "rolling"]


@dataclass(frozen=True)
class ScopeCheck:
    """One counter a scope's limits add to a decision. `params`: requests (window ms); calendar (start and
    end of the current period, end of the next, in epoch ms); rolling (bucket ms, buckets before the
    current one)."""

    scope: Scope
    scope_id: str
    kind: CheckKind
    suffix: str  # the counter's key after the caller's tag
    limit: int  # requests, tokens, or nano-USD
    params: tuple[int, int, int] = (0, 0, 0)
    budget: Budget | None = None

    def key(self, tag: str) -> str:
        return tag + self.suffix


def counter_prefix(scope: Scope, scope_id: str) -> str:
    return f":L:{SCOPE_LETTER[scope]}:{quote(scope_id, safe='')}"


def budget_suffix(scope: Scope, scope_id: str, budget: Budget) -> str:
    return f"{counter_prefix(scope, scope_id)}:b:{budget.spec}"


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class CalendarSpans:
    """The current and next period of each calendar budget, from this process's clock less
    CLOCK_LEEWAY; each is computed once per period."""

    def __init__(self) -> None:
        self._spans: dict[str, tuple[Span, Span]] = {}

    def params(self, budget: Budget, now: datetime) -> tuple[int, int, int]:
        looked = now - CLOCK_LEEWAY
        cached = self._spans.get(budget.spec)
        if cached is None or looked not in cached[0]:
            first = budget.span(looked)
            cached = (first, budget.span(first.end))
            if len(self._spans) > 10_000:
                self._spans.clear()
            self._spans[budget.spec] = cached
        first, second = cached
        return epoch_ms(first.start), epoch_ms(first.end), epoch_ms(second.end)


def scope_checks(scopes: Iterable[tuple[Scope, str, ScopeLimits]], spans: CalendarSpans, now: datetime
                 ) -> tuple[ScopeCheck, ...]:
    checks: list[ScopeCheck] = []
    for scope, scope_id, limits in scopes:
        prefix = counter_prefix(scope, scope_id)
        if limits.requests is not None:
            checks.append(ScopeCheck(scope, scope_id, "requests", f"{prefix}:req", limits.requests,
                                     (limits.window_s * 1000, 0, 0)))
        if limits.tokens_per_minute is not None:
            checks.append(ScopeCheck(scope, scope_id, "tokens", f"{prefix}:tok", limits.tokens_per_minute))
        for budget in limits.budgets:
            length = budget.rolling_length
            if length is None:
                kind: CheckKind = "calendar"
                params = spans.params(budget, now)
            else:
                kind, params = "rolling", (RollingBuckets.of(length).bucket_ms, ROLLING_BUCKETS, 0)
            checks.append(ScopeCheck(scope, scope_id, kind, budget_suffix(scope, scope_id, budget),
                                     to_nano_usd(budget.usd), params, budget))
    return tuple(checks)


@dataclass(frozen=True)
class BudgetCounter:
    """A budget's counter in Redis, as a reload sees it: which scope's, and under which tag."""

    key: str
    scope: Scope
    scope_id: str
    budget: Budget


def budget_counters(book: LimitsBook) -> dict[str, BudgetCounter]:
    counters = {}
    for (scope, scope_id), limits in book.limits.items():
        tag = book.tag_of_scope(scope, scope_id) if limits.budgets else None
        for budget in limits.budgets if tag else ():
            key = tag + budget_suffix(scope, scope_id, budget)  # type: ignore[operator]
            counters[key] = BudgetCounter(key, scope, scope_id, budget)
    return counters


@dataclass(frozen=True)
class SpendAsk:
    """The ledger's spend of one scope in [start, end), per 15-minute bucket."""

    scope: Scope
    scope_id: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class CounterSeed:
    """What a counter starts from when the limiter first uses it: fields (period start, rolling bucket or
    UTC day) and their nano-USD, written only where the counter has none (`only_if_absent`: the whole key),
    expiring at `expire_at_ms`."""

    key: str
    fields: Mapping[int, int]
    expire_at_ms: int
    only_if_absent: bool


def spend_asks(counters: Iterable[BudgetCounter], now: datetime) -> list[SpendAsk]:
    asks = []
    for counter in counters:
        span = counter.budget.span(now)
        start = span.start.replace(minute=span.start.minute // 15 * 15, second=0, microsecond=0)
        asks.append(SpendAsk(counter.scope, counter.scope_id, start, now + QUARTER_HOUR))
    return asks


def budget_seed(counter: BudgetCounter, spent: Mapping[datetime, Decimal], now: datetime) -> CounterSeed:
    """A calendar counter starts its period from the ledger's spend in it; a rolling counter puts each
    quarter hour's spend in the bucket that holds the quarter's end, so that it leaves the window no
    earlier than it should."""
    length = counter.budget.rolling_length
    if length is None:
        span = counter.budget.span(now)
        total = sum((cost for at, cost in spent.items() if at >= span.start), Decimal(0))
        return CounterSeed(counter.key, {epoch_ms(span.start): to_nano_usd(total)},
                           epoch_ms(span.end) + CALENDAR_GRACE_MS, only_if_absent=False)
    buckets = RollingBuckets.of(length)
    fields: dict[int, int] = {}
    for at, cost in spent.items():
        bucket = buckets.bucket(min(at + QUARTER_HOUR, now) - timedelta(milliseconds=1))
        fields[bucket] = fields.get(bucket, 0) + to_nano_usd(cost)
    expire = (buckets.bucket(now) + ROLLING_BUCKETS + 2) * buckets.bucket_ms
    return CounterSeed(counter.key, fields, expire, only_if_absent=True)


def utc_day(now: datetime) -> Span:
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Span(start, start + timedelta(days=1))


def moved_users(old: LimitsBook, new: LimitsBook) -> list[str]:
    """Users whose team changed: their tier counters are under another tag now."""
    return sorted(user for user in set(old.teams) | set(new.teams) if old.teams.get(user) != new.teams.get(user))


def tier_day_seed(user: str, team: str | None, spent_today: Decimal, now: datetime) -> CounterSeed:
    """A user who changed team keeps today's spend against the tier's daily budget (the field is the UTC
    day number, as the decision script counts it)."""
    day = epoch_ms(now) // 86_400_000
    return CounterSeed(f"{caller_base(user, None, team)}:usd", {day: to_nano_usd(spent_today)},
                       (day + 2) * 86_400_000, only_if_absent=False)
