"""Spend per key, user and team: the quarter-hour increments a batch of priced calls makes, and which
budgets' totals the batch may have taken past a soft threshold. Pure domain code: no I/O, Decimal only.

A call counts for its key (`api_key_id`), its user and the team the limiter counted it for (`team_id`).
A calendar budget's spend is the sum of the quarter hours of its period; a rolling budget's, the sum of
the quarter hours from the one that holds the window's start (to the quarter hour, never less)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from services.cost.rollups import UsageRecord
from shared.budget_periods import Span, quarter_start
from shared.events import LlmCompleted
from shared.limits import Budget, Scope, ScopeLimits

SpendKey = tuple[str, str, datetime]  # scope, scope id, quarter hour


def scopes_of(event: LlmCompleted) -> list[tuple[Scope, str]]:
    found: list[tuple[Scope, str]] = []
    if event.api_key_id:
        found.append(("key", str(event.api_key_id)))
    if event.user_id:
        found.append(("user", event.user_id))
    if event.team_id:
        found.append(("team", event.team_id))
    return found


def scope_spend_deltas(records: Sequence[UsageRecord]) -> list[tuple[SpendKey, int, Decimal]]:
    """(scope, id, quarter hour), requests and cost a batch adds, sorted so that writers lock rows in one order."""
    deltas: dict[SpendKey, tuple[int, Decimal]] = {}
    for record in records:
        quarter = quarter_start(record.at)
        for scope, scope_id in scopes_of(record.event):
            requests, cost = deltas.get((scope, scope_id, quarter), (0, Decimal(0)))
            deltas[(scope, scope_id, quarter)] = (requests + 1, cost + record.cost)
    return [(key, requests, cost) for key, (requests, cost) in sorted(deltas.items())]


@dataclass(frozen=True)
class BudgetWatch:
    """A budget with soft thresholds whose period this batch added to: `added` is the batch's part."""

    scope: Scope
    scope_id: str
    budget: Budget
    soft: tuple[Decimal, ...]
    span: Span
    added: Decimal


def budget_watches(records: Sequence[UsageRecord], limits: Mapping[tuple[Scope, str], ScopeLimits],
                   now: datetime) -> list[BudgetWatch]:
    """The budgets with soft thresholds that this batch's calls count in, each period once. A rolling
    window is the one that ends now; a call outside it (a late redelivery) adds nothing to it."""
    added: defaultdict[tuple[Scope, str, Budget, Span], Decimal] = defaultdict(Decimal)
    for record in records:
        for scope, scope_id in scopes_of(record.event):
            own = limits.get((scope, scope_id))
            if own is None or not own.soft:
                continue
            for budget in own.budgets:
                span = budget.spend_span(now if budget.rolling else record.at)
                if quarter_start(record.at) in span:
                    added[(scope, scope_id, budget, span)] += record.cost
    return [BudgetWatch(scope, scope_id, budget, limits[(scope, scope_id)].soft, span, cost)
            for (scope, scope_id, budget, span), cost in sorted(added.items(), key=lambda item: (
                item[0][0], item[0][1], item[0][2].spec, item[0][3].start))]


def lock_names(watches: Sequence[BudgetWatch]) -> list[str]:
    """One name per watched scope: a batch holds them while it sums their spend, so that each batch sees
    every batch committed before it and a crossing is seen by exactly one."""
    return sorted({f"{watch.scope}:{watch.scope_id}" for watch in watches})
