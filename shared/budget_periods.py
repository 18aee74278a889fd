"""The periods a budget is spent over: a calendar day, week (from Monday) or month in a timezone, or a
rolling window of a fixed length. Pure functions, part of the contract: the limiter counts a budget over
these periods, the cost service sums its spend and raises its alerts over the same ones, and the admin API
and the console say when each resets.

A calendar period starts at local midnight and is then converted to UTC, so a day across a DST change is
23 or 25 hours long and a month ends at the local midnight after its last day, wherever UTC is then.

A rolling window is counted in ROLLING_BUCKETS buckets of a sixtieth of its length (at least a second):
spend is counted for between one and one bucket more than the window's length, so it leaves the window
at most a bucket late and a budget is never spent twice within any window of its length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CalendarPeriod = Literal["day", "week", "month"]
CALENDAR_PERIODS: tuple[CalendarPeriod, ...] = ("day", "week", "month")
ROLLING_BUCKETS = 60
MIN_ROLLING = timedelta(minutes=1)
MAX_ROLLING = timedelta(days=90)
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhdw])$")


class UnknownTimezone(ValueError):
    pass


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """An IANA timezone (`Europe/Berlin`); UnknownTimezone for a name the tz database does not have."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimezone(f"unknown timezone {name!r}: use an IANA name such as Europe/Berlin or UTC") from exc


def _first_day(period: CalendarPeriod, day: date) -> date:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_day(period: CalendarPeriod, first: date) -> date:
    if period == "day":
        return first + timedelta(days=1)
    if period == "week":
        return first + timedelta(days=7)
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of a local date. A midnight that a DST change skips maps (fold=0, the offset
    before the change) to the instant of the change, which is that date's first."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


@dataclass(frozen=True)
class Span:
    """[start, end) in UTC."""

    start: datetime
    end: datetime

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def calendar_period(period: CalendarPeriod, timezone: str, at: datetime) -> Span:
    """The calendar day, week or month in `timezone` that contains the instant `at`, in UTC."""
    tz = zone(timezone)
    first = _first_day(period, at.astimezone(tz).date())
    return Span(_local_midnight(first, tz), _local_midnight(_next_first_day(period, first), tz))


def parse_duration(text: str) -> timedelta:
    """A rolling window's length: a whole number and a unit, s, m, h, d or w (`90m`, `24h`, `7d`)."""
    match = DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90m, 24h, 7d or 2w")
    length = timedelta(seconds=int(match[1]) * DURATION_UNITS[match[2]])
    if not MIN_ROLLING <= length <= MAX_ROLLING:
        raise ValueError(f"a rolling window is from {MIN_ROLLING} to {MAX_ROLLING.days} days long, not {text}")
    return length


@dataclass(frozen=True)
class RollingBuckets:
    """How a rolling window is counted: buckets of `bucket_ms`, aligned on the epoch; a moment in bucket b
    counts the buckets from b - ROLLING_BUCKETS to b."""

    bucket_ms: int

    @classmethod
    def of(cls, length: timedelta) -> RollingBuckets:
        return cls(max(1000, int(length / timedelta(milliseconds=1)) // ROLLING_BUCKETS))

    def bucket(self, at: datetime) -> int:
        return int(at.timestamp() * 1000) // self.bucket_ms

    def counted_from(self, at: datetime) -> datetime:
        """The first instant whose spend still counts at `at`."""
        first = self.bucket(at) - ROLLING_BUCKETS
        return datetime.fromtimestamp(first * self.bucket_ms / 1000, UTC)

    def leaves_at(self, bucket: int) -> datetime:
        """When the spend of `bucket` stops counting."""
        return datetime.fromtimestamp((bucket + ROLLING_BUCKETS + 1) * self.bucket_ms / 1000, UTC)


QUARTER_HOUR = timedelta(minutes=15)


def quarter_start(at: datetime) -> datetime:
    """The quarter hour that holds `at`: the cost service keeps each scope's spend per quarter hour."""
    return at.replace(minute=at.minute // 15 * 15, second=0, microsecond=0)


def period_seconds(span: Span) -> int:
    return int((span.end - span.start).total_seconds())
