"""This month's spend projected to its end. The cost service warns when the projection passes the
monthly threshold and the console shows it: one rule, so that the two always agree."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import Decimal


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The UTC month that contains `at`: [first instant, first instant of the next month)."""
    start = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=calendar.monthrange(start.year, start.month)[1])


def projected_month_end(month_to_date: Decimal, now: datetime) -> Decimal:
    """This month's spend at its end if it goes on at the pace it has kept so far (linear)."""
    start, end = month_bounds(now)
    elapsed = (now - start) / timedelta(seconds=1)
    if elapsed <= 0:
        return month_to_date
    return month_to_date * Decimal((end - start) / timedelta(seconds=1)) / Decimal(elapsed)
