"""The cost.query contract's own validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.cost_query import CostQuery


def test_analytics_needs_an_ordered_range_with_timezones():
    assert CostQuery(kind="analytics", start="2026-11-01T00:00:00Z", end="2026-11-02T00:00:00Z").top_n == 10
    for start, end, reason in (("2026-11-02T00:00:00Z", "2026-11-01T00:00:00Z", "end must be after start"),
                               ("2026-11-01T00:00:00", "2026-11-02T00:00:00", "timezone"),
                               (None, "2026-11-02T00:00:00Z", "needs start and end")):
        with pytest.raises(ValidationError, match=reason):
            CostQuery(kind="analytics", start=start, end=end)


def test_current_needs_no_range_and_top_n_is_bounded():
    assert CostQuery(kind="current").start is None
    with pytest.raises(ValidationError):
        CostQuery(kind="current", top_n=101)


def test_a_key_s_spend_is_asked_for_current_spend_only():
    assert CostQuery(kind="current", api_key_id=7).api_key_id == 7
    with pytest.raises(ValidationError, match="current spend only"):
        CostQuery(kind="analytics", start="2026-11-01T00:00:00Z", end="2026-11-02T00:00:00Z", api_key_id=7)
    with pytest.raises(ValidationError):
        CostQuery(kind="current", api_key_id=0)
