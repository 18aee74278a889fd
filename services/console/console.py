"""The console's use case: who may see what, and each page's figures, from ports that read what the
other services record (ConsoleStore), ask the running services (LiveStatus), act through the api's
admin API (KeyActions) and the bus (BusActions). No I/O here: the adapters do it."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal, Protocol, TypeVar

from services.console.periods import HOUR, TimeRange, floor_hour
from shared.api_keys import KeyRecord, hash_api_key
from shared.budget_periods import Span
from shared.limits import Budget, Scope, ScopeLimits
from shared.policy import Levels, Thresholds
from shared.spend_projection import projected_month_end

DIMENSIONS = ("model", "served_model", "endpoint", "tag", "user")
ORDERS = ("cost", "requests", "tokens", "key")
MINUTE = timedelta(minutes=1)
N = TypeVar("N", int, Decimal)


@dataclass(frozen=True)
class Viewer:
    """Who is signed in: an admin sees everyone; anyone else only their own user."""

    key_id: int
    user_id: str
    admin: bool

    @property
    def only_user(self) -> str | None:
        return None if self.admin else self.user_id


@dataclass(frozen=True)
class Traffic:
    per_minute: dict[datetime, int]
    requests: int
    successes: int
    p95_latency_ms: float | None


@dataclass(frozen=True)
class BreakdownRow:
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    estimated_cost: Decimal
    cache_hits: int = 0
    saved: Decimal = Decimal(0)  # what the cache hits would have cost

    @property
    def hit_rate(self) -> Decimal | None:
        """Percent of the requests the response cache answered."""
        return (Decimal(100) * self.cache_hits / self.requests).quantize(Decimal("0.1")) if self.requests else None


@dataclass(frozen=True)
class KeyUsage:
    today: Decimal = Decimal(0)
    this_month: Decimal = Decimal(0)
    requests_today: int = 0


@dataclass(frozen=True)
class DenialRow:
    hour: datetime
    tier: str
    endpoint: str
    reason: str
    denials: int


@dataclass(frozen=True)
class DeniedCaller:
    caller: str
    tier: str
    denials: int
    last_at: datetime


@dataclass(frozen=True)
class Delivery:
    status: str  # the latest attempt's: sent, retrying or failed
    attempts: int
    error: str | None


@dataclass(frozen=True)
class AlertRow:
    key: str
    severity: str
    message: str
    raised_at: datetime
    deliveries: dict[str, Delivery] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.key.partition(":")[0]


@dataclass(frozen=True)
class BackupRow:
    id: int
    trigger: str
    status: str
    object_key: str | None
    size_bytes: int | None
    sha256: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None

    @property
    def verification(self) -> str:
        """A run is marked success only after its object was read back and its SHA-256 matched."""
        return {"success": "read back, checksum matched", "running": "pending"}.get(self.status, "not verified")


@dataclass(frozen=True)
class DependencyRow:
    name: str
    status: str
    latency_ms: float | None
    last_checked: str | None
    failures_in_a_row: int
    message: str


@dataclass(frozen=True)
class BudgetRow:
    """One budget now: spent in its period (the cost service's record), what remains, when it resets."""

    budget: Budget
    period_start: datetime
    spent: Decimal
    resets_at: datetime | None

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.budget.usd - self.spent)

    @property
    def percent(self) -> Decimal:
        return (Decimal(100) * self.spent / self.budget.usd).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class LimitsRow:
    """A key's, user's or team's own limits, as set, with each budget's spend."""

    scope: Scope
    scope_id: str
    limits: ScopeLimits
    updated_at: datetime
    updated_by: str
    budgets: tuple[BudgetRow, ...] = ()


@dataclass(frozen=True)
class TeamRow:
    team_id: str
    name: str
    created_at: datetime
    members: tuple[str, ...]


@dataclass(frozen=True)
class TeamView:
    """A team with its members, their keys, its spend this UTC day and month, and its own limits."""

    team: TeamRow
    keys: list[KeyRecord]
    today: Decimal
    this_month: Decimal
    limits: LimitsRow | None


class ConsoleStore(Protocol):
    """What the other services recorded in Postgres; `user` None means every user."""

    async def signed_in_key(self, key_hash: str) -> KeyRecord | None: ...

    async def key(self, key_id: int) -> KeyRecord | None: ...

    async def spend(self, user: str | None, now: datetime) -> dict[str, tuple[Decimal, Decimal]]:
        """Spend and what the response cache saved, this hour, day and month (UTC)."""
        ...

    async def hourly_cost(self, user: str | None, start: datetime, end: datetime) -> dict[datetime, Decimal]: ...

    async def traffic(self, user: str | None, start: datetime, end: datetime) -> Traffic: ...

    async def breakdown(self, user: str | None, window: TimeRange, dimension: str, order: str,
                        limit: int) -> list[BreakdownRow]: ...

    async def keys(self, user: str | None) -> list[KeyRecord]: ...

    async def usage_by_key(self, key_ids: Sequence[int], now: datetime) -> dict[int, KeyUsage]: ...

    async def denials(self, user: str | None, start: datetime, end: datetime) -> list[DenialRow]: ...

    async def most_denied(self, user: str | None, start: datetime, end: datetime, limit: int
                          ) -> list[DeniedCaller]: ...

    async def alerts(self, user: str | None, since: datetime, limit: int) -> list[AlertRow]: ...

    async def backups(self, limit: int) -> list[BackupRow]: ...

    async def scope_limits(self, scopes: Sequence[tuple[Scope, str]] | None) -> list[LimitsRow]:
        """The limits set on these scopes (None: on every scope), without spend."""
        ...

    async def budget_spend(self, asks: Sequence[tuple[Scope, str, Span]]) -> list[tuple[Decimal, datetime | None]]:
        """Each scope's recorded spend in the span, and its first quarter hour with spend."""
        ...

    async def teams(self, team_id: str | None) -> list[TeamRow]: ...

    async def team_of(self, user: str) -> str | None: ...

    async def team_keys(self, team_ids: Sequence[str]) -> dict[str, list[KeyRecord]]: ...

    async def team_spend(self, team_ids: Sequence[str], now: datetime) -> dict[str, tuple[Decimal, Decimal]]:
        """Each team's spend this UTC day and month."""
        ...


class LiveStatus(Protocol):
    """The running services' own view: None when a service does not answer."""

    async def dependencies(self) -> list[DependencyRow] | None: ...

    async def breakers(self) -> dict[str, str] | None: ...


class KeyActionRefused(Exception):
    """The admin API refused a key action; the message is the api's own and safe to show."""


@dataclass(frozen=True)
class CreatedKey:
    id: int
    key: str
    prefix: str


class KeyActions(Protocol):
    """Changes to keys, limits and teams through the api's admin API, made as the signed-in key (audited as
    its user). KeyActionRefused carries the api's own message."""

    async def create(self, as_key: str, user_id: str, tier: str, alias: str | None, expires_in: str | None,
                     admin: bool) -> CreatedKey: ...

    async def revoke(self, as_key: str, key_id: int) -> None: ...

    async def set_limits(self, as_key: str, scope: Scope, scope_id: str, limits: dict) -> None: ...

    async def delete_limits(self, as_key: str, scope: Scope, scope_id: str) -> None: ...

    async def create_team(self, as_key: str, team_id: str, name: str, members: list[str]) -> None: ...

    async def change_team(self, as_key: str, team_id: str, add: list[str], remove: list[str]) -> None: ...


class BackupUnavailable(Exception):
    """No backup worker takes requests now."""


class BusActions(Protocol):
    async def dead_letters(self) -> int | None: ...

    async def request_backup(self) -> str: ...


Level = Literal["ok", "warning", "critical"]


@dataclass(frozen=True)
class PeriodSpend:
    period: str
    spent: Decimal
    warning: Decimal | None
    critical: Decimal | None
    saved: Decimal = Decimal(0)  # by the response cache

    @property
    def level(self) -> Level:
        if self.critical is not None and self.spent > self.critical:
            return "critical"
        if self.warning is not None and self.spent > self.warning:
            return "warning"
        return "ok"


@dataclass(frozen=True)
class Overview:
    spend: list[PeriodSpend]
    projected_month: Decimal
    hourly_cost: list[tuple[datetime, Decimal]]
    traffic: Traffic
    minutes: list[tuple[datetime, int]]
    alerts_today: list[AlertRow]

    @property
    def success_rate(self) -> Decimal | None:
        if not self.traffic.requests:
            return None
        return (Decimal(100) * self.traffic.successes / self.traffic.requests).quantize(Decimal("0.1"))


def period_spend(spent: dict[str, tuple[Decimal, Decimal]], thresholds: Thresholds, per_user: bool
                 ) -> list[PeriodSpend]:
    """Spend this hour, today and this month beside its thresholds, and what the cache saved: a user's own
    day is held to the per-user daily levels, which are the only per-user ones."""
    levels = {"hour": thresholds.hourly, "day": thresholds.daily, "month": thresholds.monthly}
    if per_user:
        levels = {"hour": Levels(), "day": thresholds.user_daily, "month": Levels()}
    nothing = (Decimal(0), Decimal(0))
    return [PeriodSpend(period, spent.get(period, nothing)[0], levels[period].warning, levels[period].critical,
                        spent.get(period, nothing)[1])
            for period in ("hour", "day", "month")]


def series(values: Mapping[datetime, N], start: datetime, end: datetime, step: timedelta, zero: N
           ) -> list[tuple[datetime, N]]:
    """One value per step from start to end, `zero` where nothing was recorded."""
    count = int((end - start) / step)
    return [(start + i * step, values.get(start + i * step, zero)) for i in range(count)]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A user id or tag that a spreadsheet would run as a formula (`=HYPERLINK(...)`) is written as text."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def breakdown_csv(rows: Sequence[BreakdownRow], dimension: str, window: TimeRange) -> str:
    """The rows exactly as the page shows them, with the window they cover."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([dimension, "requests", "prompt_tokens", "completion_tokens", "cost_usd", "estimated_cost_usd",
                     "cache_hits", "saved_usd", "from_utc", "to_utc"])
    for row in rows:
        writer.writerow([spreadsheet_safe(row.key), row.requests, row.prompt_tokens, row.completion_tokens, row.cost,
                         row.estimated_cost, row.cache_hits, row.saved, window.start.isoformat(),
                         window.end.isoformat()])
    return out.getvalue()


PERIOD_WORDS = ("day", "week", "month")


def budget_line(budget: Budget) -> str:
    """A budget as the Limits form writes it: `500 month Europe/Berlin`, `5 rolling 24h`."""
    if budget.rolling:
        return f"{budget.usd} rolling {budget.rolling}"
    return f"{budget.usd} {budget.period}" + (f" {budget.timezone}" if budget.timezone else "")


def parse_budget_lines(text: str) -> list[dict[str, str]]:
    """The Limits form's budgets, one a line: `500 month Europe/Berlin`, `$0.002 per day`, `5 rolling 24h`.
    ValueError names the line it cannot read; the amounts, periods and zones are the admin API's to check."""
    budgets = []
    for number, line in enumerate(text.splitlines(), 1):
        words = [w for w in line.replace("$", " ").split() if w.lower() not in ("per", "in")]
        if not words:
            continue
        if len(words) == 3 and words[1] == "rolling":
            budgets.append({"usd": words[0], "rolling": words[2]})
        elif len(words) in (2, 3) and words[1] in PERIOD_WORDS:
            budgets.append({"usd": words[0], "period": words[1], **({"timezone": words[2]} if len(words) == 3 else {})})
        else:
            raise ValueError(f"budget line {number} ({line.strip()!r}): write `<usd> day|week|month [timezone]` "
                             "or `<usd> rolling <24h>`")
    return budgets


def parse_soft(text: str) -> list[str]:
    """`0.5, 0.8` or `50%, 80%` as fractions."""
    fractions = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if part:
            fractions.append(str(Decimal(part[:-1].strip()) / 100) if part.endswith("%") else part)
    return fractions


def limits_from_form(budgets: str, soft: str, requests: str, window_s: str, tokens_per_minute: str,
                     models: str) -> dict:
    """The body of PUT /admin/.../limits from the Limits form's fields (empty: not set)."""
    body: dict = {"budgets": parse_budget_lines(budgets), "soft": parse_soft(soft)}
    if requests.strip():
        body["requests"] = requests.strip()
        if window_s.strip():
            body["window_s"] = window_s.strip()
    if tokens_per_minute.strip():
        body["tokens_per_minute"] = tokens_per_minute.strip()
    names = [name.strip() for name in models.replace("\n", ",").split(",") if name.strip()]
    if names:
        body["models"] = names
    return body


class AdminOnly(Exception):
    """What was asked is for admin keys."""


def admin_only(viewer: Viewer) -> None:
    if not viewer.admin:
        raise AdminOnly("this page is for admin keys")


class Console:
    def __init__(self, store: ConsoleStore, status: LiveStatus, keys: KeyActions, bus: BusActions,
                 thresholds: Thresholds) -> None:
        self.store, self.status, self.key_actions, self.bus = store, status, keys, bus
        self.thresholds = thresholds

    async def sign_in(self, key: str, now: datetime) -> KeyRecord | None:
        """The key's record when it is an active key, else None."""
        record = await self.store.signed_in_key(hash_api_key(key)) if key else None
        return record if record is not None and record.active(now) else None

    async def viewer(self, key_id: int, user_id: str, now: datetime) -> Viewer | None:
        """Who a session stands for, read again from its key (a revoked or expired key ends its sessions,
        and rights are never taken from the cookie); None when the key no longer signs anyone in."""
        record = await self.store.key(key_id)
        if record is None or not record.active(now) or record.user_id != user_id:
            return None
        return Viewer(record.id, record.user_id, record.admin)

    async def overview(self, viewer: Viewer, now: datetime) -> Overview:
        user = viewer.only_user
        spent = await self.store.spend(user, now)
        hour = floor_hour(now)
        first_hour = hour - 47 * HOUR
        hourly = await self.store.hourly_cost(user, first_hour, hour + HOUR)
        since = now.replace(second=0, microsecond=0) - timedelta(hours=24) + MINUTE
        until = since + timedelta(hours=24)
        traffic = await self.store.traffic(user, since, until)
        alerts = await self.store.alerts(user, hour.replace(hour=0), 100)
        return Overview(spend=period_spend(spent, self.thresholds, per_user=user is not None),
                        projected_month=projected_month_end(spent.get("month", (Decimal(0), Decimal(0)))[0], now),
                        hourly_cost=series(hourly, first_hour, hour + HOUR, HOUR, Decimal(0)), traffic=traffic,
                        minutes=series(traffic.per_minute, since, until, MINUTE, 0), alerts_today=alerts)

    async def costs(self, viewer: Viewer, window: TimeRange, dimension: str, order: str, limit: int
                    ) -> list[BreakdownRow]:
        if dimension not in DIMENSIONS or order not in ORDERS:
            raise ValueError(f"dimension must be one of {', '.join(DIMENSIONS)}; sort one of {', '.join(ORDERS)}")
        return await self.store.breakdown(viewer.only_user, window, dimension, order, limit)

    async def keys(self, viewer: Viewer, now: datetime) -> tuple[list[KeyRecord], dict[int, KeyUsage]]:
        rows = await self.store.keys(viewer.only_user)
        return rows, await self.store.usage_by_key([row.id for row in rows], now)

    async def limits(self, viewer: Viewer, window: TimeRange) -> tuple[list[DenialRow], list[DeniedCaller]]:
        user = viewer.only_user
        return (await self.store.denials(user, window.start, window.end),
                await self.store.most_denied(user, window.start, window.end, 20))

    async def alerts(self, viewer: Viewer, now: datetime) -> tuple[list[AlertRow], int | None]:
        rows = await self.store.alerts(viewer.only_user, now - timedelta(days=7), 200)
        return rows, (await self.bus.dead_letters() if viewer.admin else None)

    async def health(self, viewer: Viewer) -> tuple[list[DependencyRow] | None, dict[str, str] | None]:
        """Both services are asked at once: either may take its whole timeout when it is down."""
        admin_only(viewer)
        return await asyncio.gather(self.status.dependencies(), self.status.breakers())

    async def backups(self, viewer: Viewer) -> list[BackupRow]:
        admin_only(viewer)
        return await self.store.backups(50)

    async def request_backup(self, viewer: Viewer) -> str:
        admin_only(viewer)
        return await self.bus.request_backup()

    async def create_key(self, viewer: Viewer, as_key: str, user_id: str, tier: str, alias: str | None,
                         expires_in: str | None, admin: bool) -> CreatedKey:
        admin_only(viewer)
        return await self.key_actions.create(as_key, user_id, tier, alias, expires_in, admin)

    async def revoke_key(self, viewer: Viewer, as_key: str, key_id: int) -> None:
        admin_only(viewer)
        await self.key_actions.revoke(as_key, key_id)

    async def own_scopes(self, viewer: Viewer) -> list[tuple[Scope, str]] | None:
        """The scopes a viewer may see the limits of: every one for an admin; else their user, their keys
        and their team."""
        if viewer.admin:
            return None
        keys = await self.store.keys(viewer.user_id)
        team = await self.store.team_of(viewer.user_id)
        scopes: list[tuple[Scope, str]] = [("user", viewer.user_id), *(("key", str(k.id)) for k in keys)]
        return [*scopes, ("team", team)] if team else scopes

    async def with_spend(self, rows: Sequence[LimitsRow], now: datetime) -> list[LimitsRow]:
        asks = [(row.scope, row.scope_id, budget.spend_span(now)) for row in rows for budget in row.limits.budgets]
        spent = iter(await self.store.budget_spend(asks) if asks else [])
        answered = []
        for row in rows:
            budgets = []
            for budget in row.limits.budgets:
                cost, first = next(spent)
                budgets.append(BudgetRow(budget, budget.spend_span(now).start, cost, budget.resets_at(now, first)))
            answered.append(LimitsRow(row.scope, row.scope_id, row.limits, row.updated_at, row.updated_by,
                                      tuple(budgets)))
        return answered

    async def budgets(self, viewer: Viewer, now: datetime) -> list[LimitsRow]:
        """Every limit the viewer may see, each budget with its spend, remaining and reset."""
        return await self.with_spend(await self.store.scope_limits(await self.own_scopes(viewer)), now)

    async def teams(self, viewer: Viewer, now: datetime) -> list[TeamView]:
        """Every team for an admin; else the viewer's own, if any."""
        team = None if viewer.admin else await self.store.team_of(viewer.user_id)
        if not viewer.admin and team is None:
            return []
        teams = await self.store.teams(team)
        ids = [t.team_id for t in teams]
        keys = await self.store.team_keys(ids)
        spend = await self.store.team_spend(ids, now)
        limits = {row.scope_id: row for row in await self.with_spend(
            await self.store.scope_limits([("team", t) for t in ids]), now)} if ids else {}
        return [TeamView(t, keys.get(t.team_id, []), *spend.get(t.team_id, (Decimal(0), Decimal(0))),
                         limits.get(t.team_id)) for t in teams]

    async def set_limits(self, viewer: Viewer, as_key: str, scope: Scope, scope_id: str, limits: dict) -> None:
        admin_only(viewer)
        await self.key_actions.set_limits(as_key, scope, scope_id, limits)

    async def delete_limits(self, viewer: Viewer, as_key: str, scope: Scope, scope_id: str) -> None:
        admin_only(viewer)
        await self.key_actions.delete_limits(as_key, scope, scope_id)

    async def create_team(self, viewer: Viewer, as_key: str, team_id: str, name: str, members: list[str]) -> None:
        admin_only(viewer)
        await self.key_actions.create_team(as_key, team_id, name, members)

    async def change_team(self, viewer: Viewer, as_key: str, team_id: str, add: list[str], remove: list[str]
                          ) -> None:
        admin_only(viewer)
        await self.key_actions.change_team(as_key, team_id, add, remove)

