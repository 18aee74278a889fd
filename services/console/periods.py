"""Time ranges of the console's pages and how to read them from the hourly and daily rollups. Pure:
no I/O. Ranges are whole UTC hours, the rollups' finest bucket, so that a page and the ledger agree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
PRESETS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
LONGEST = 400 * DAY


@dataclass(frozen=True)
class TimeRange:
    """[start, end): whole UTC hours."""

    start: datetime
    end: datetime
    name: str

    def hours(self) -> list[datetime]:
        return [self.start + i * HOUR for i in range(int((self.end - self.start) / HOUR))]


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def preset(name: str, now: datetime) -> TimeRange:
    """The last hour, 24 hours, 7 or 30 days: the hours that began in that time, the current one included."""
    end = floor_hour(now) + HOUR
    return TimeRange(floor_hour(now - PRESETS[name]) + HOUR, end, name)


def parse_range(name: str | None, start: str | None, end: str | None, now: datetime) -> TimeRange:
    """A preset by name (24h when none is given), or "custom" with ISO dates or times (UTC unless a
    zone is given), each rounded down to its hour. ValueError says what is wrong."""
    name = name or "24h"
    if name in PRESETS:
        return preset(name, now)
    if name != "custom":
        raise ValueError(f"range must be one of {', '.join(PRESETS)} or custom")
    if not start or not end:
        raise ValueError("a custom range needs a start and an end")
    first, last = floor_hour(_parse_time(start, "start")), floor_hour(_parse_time(end, "end"))
    if last <= first:
        raise ValueError("the end must be at least an hour after the start")
    if last - first > LONGEST:
        raise ValueError(f"a custom range may span at most {LONGEST.days} days")
    return TimeRange(first, last, "custom")


def _parse_time(text: str, what: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} must be a date or time such as 2026-11-01 or 2026-11-01T08:00") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def rollup_spans(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """[start, end) as few rollup rows as possible: (period, first bucket, end) with hour buckets up to
    the first midnight and after the last one, and day buckets between."""
    first_midnight = start.replace(hour=0) + (DAY if start.hour else timedelta(0))
    last_midnight = end.replace(hour=0)
    if last_midnight <= first_midnight:
        return [("hour", start, end)]
    spans = [("hour", start, first_midnight), ("day", first_midnight, last_midnight), ("hour", last_midnight, end)]
    return [span for span in spans if span[1] < span[2]]

