"""Calendar periods in a timezone and rolling windows: where each budget period starts and ends, across
both DST changes in Europe/Berlin and America/New_York, month ends, weeks from Monday, and a midnight
that a DST change skips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared.budget_periods import (
    ROLLING_BUCKETS,
    RollingBuckets,
    Span,
    UnknownTimezone,
    calendar_period,
    parse_duration,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("timezone", "at", "start", "end", "hours"), [
    # Berlin springs forward at 02:00 on 29 March 2026: its day is 23 hours long
    ("Europe/Berlin", "2026-03-29T12:00", "2026-03-28T23:00", "2026-03-29T22:00", 23),
    # ... and falls back at 03:00 on 25 October 2026: 25 hours
    ("Europe/Berlin", "2026-10-25T12:00", "2026-10-24T22:00", "2026-10-25T23:00", 25),
    # New York springs forward on 8 March 2026 and falls back on 1 November 2026
    ("America/New_York", "2026-03-08T12:00", "2026-03-08T05:00", "2026-03-09T04:00", 23),
    ("America/New_York", "2026-11-01T12:00", "2026-11-01T04:00", "2026-11-02T05:00", 25),
    # an ordinary day on either side
    ("Europe/Berlin", "2026-07-01T12:00", "2026-06-30T22:00", "2026-07-01T22:00", 24),
    ("America/New_York", "2026-01-15T12:00", "2026-01-15T05:00", "2026-01-16T05:00", 24),
])
def test_a_day_runs_from_local_midnight_to_local_midnight_across_dst(timezone, at, start, end, hours):
    span = calendar_period("day", timezone, utc(at))
    assert span == Span(utc(start), utc(end))
    assert span.end - span.start == timedelta(hours=hours)


def test_a_local_midnight_belongs_to_the_new_day_and_the_instant_before_to_the_old():
    midnight = utc("2026-03-28T23:00")  # 00:00 in Berlin on the day it springs forward
    assert calendar_period("day", "Europe/Berlin", midnight).start == midnight
    assert calendar_period("day", "Europe/Berlin", midnight - timedelta(microseconds=1)).end == midnight


def test_the_repeated_hour_of_a_fall_back_is_in_that_one_day():
    first = utc("2026-11-01T05:30")  # 01:30 EDT
    second = utc("2026-11-01T06:30")  # 01:30 EST, an hour later
    assert calendar_period("day", "America/New_York", first) == calendar_period("day", "America/New_York", second)


@pytest.mark.parametrize(("timezone", "at", "start", "end"), [
    # Berlin: the week of its spring change runs Monday 23 to Monday 30 March, 167 hours
    ("Europe/Berlin", "2026-03-29T21:59", "2026-03-22T23:00", "2026-03-29T22:00"),
    ("Europe/Berlin", "2026-03-29T22:00", "2026-03-29T22:00", "2026-04-05T22:00"),
    # New York: the week of its autumn change, 169 hours
    ("America/New_York", "2026-11-01T12:00", "2026-10-26T04:00", "2026-11-02T05:00"),
])
def test_a_week_starts_on_monday_at_local_midnight(timezone, at, start, end):
    span = calendar_period("week", timezone, utc(at))
    assert span == Span(utc(start), utc(end))
    assert span.start.astimezone(ZoneInfo(timezone)).weekday() == 0


@pytest.mark.parametrize(("timezone", "at", "start", "end"), [
    # 31 January 23:30 UTC is already 1 February in Berlin
    ("Europe/Berlin", "2026-01-31T23:30", "2026-01-31T23:00", "2026-02-28T23:00"),
    ("Europe/Berlin", "2026-01-31T22:59", "2025-12-31T23:00", "2026-01-31T23:00"),
    # ... and still 31 January in New York until 05:00 UTC on 1 February
    ("America/New_York", "2026-02-01T04:59", "2026-01-01T05:00", "2026-02-01T05:00"),
    # March changes its offset in both zones: it starts in winter time and ends in summer time
    ("Europe/Berlin", "2026-03-15T00:00", "2026-02-28T23:00", "2026-03-31T22:00"),
    ("America/New_York", "2026-03-15T00:00", "2026-03-01T05:00", "2026-04-01T04:00"),
    # ... and October, November the other way round
    ("Europe/Berlin", "2026-10-31T23:30", "2026-10-31T23:00", "2026-11-30T23:00"),
    ("America/New_York", "2026-11-15T00:00", "2026-11-01T04:00", "2026-12-01T05:00"),
    # a leap February, and a year end
    ("UTC", "2028-02-29T23:59", "2028-02-01T00:00", "2028-03-01T00:00"),
    ("America/New_York", "2027-01-01T03:00", "2026-12-01T05:00", "2027-01-01T05:00"),
])
def test_a_month_runs_from_its_first_local_midnight_to_the_next_months(timezone, at, start, end):
    assert calendar_period("month", timezone, utc(at)) == Span(utc(start), utc(end))


def test_consecutive_periods_meet_without_gap_or_overlap():
    for period in ("day", "week", "month"):
        for timezone in ("Europe/Berlin", "America/New_York", "Asia/Kathmandu", "UTC"):
            span = calendar_period(period, timezone, utc("2026-01-01T00:00"))
            for _ in range(60 if period == "day" else 14):
                following = calendar_period(period, timezone, span.end)
                assert following.start == span.end and following.end > following.start
                span = following


def test_a_midnight_skipped_by_a_dst_change_starts_the_day_at_the_change():
    # Chile springs forward at 24:00 on 5 September 2026: 6 September begins at 01:00 local (04:00 UTC)
    span = calendar_period("day", "America/Santiago", utc("2026-09-06T12:00"))
    assert span == Span(utc("2026-09-06T04:00"), utc("2026-09-07T03:00"))
    assert calendar_period("day", "America/Santiago", utc("2026-09-06T03:59")).end == span.start


def test_a_zone_whose_offset_is_not_whole_hours_starts_on_its_own_quarter_hour():
    span = calendar_period("day", "Asia/Kathmandu", utc("2026-05-01T12:00"))  # UTC+05:45
    assert span.start == utc("2026-04-30T18:15") and span.start.minute % 15 == 0


def test_an_unknown_timezone_is_refused_with_its_name():
    with pytest.raises(UnknownTimezone, match="Mars/Olympus"):
        calendar_period("day", "Mars/Olympus", utc("2026-01-01T00:00"))


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86_400), ("7d", 604_800),
                                                ("2w", 1_209_600)])
def test_rolling_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "-1h", "1.5h", "59s", "91d", "1y", "24 h"])
def test_rolling_durations_out_of_range_or_malformed_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_rolling_window_counts_between_its_length_and_one_bucket_more():
    buckets = RollingBuckets.of(timedelta(hours=1))
    assert buckets.bucket_ms == 60_000
    at = utc("2026-05-01T12:00:30")
    counted_from = buckets.counted_from(at)
    assert timedelta(hours=1) <= at - counted_from < timedelta(hours=1) + timedelta(minutes=1)
    spent_in = buckets.bucket(utc("2026-05-01T11:00:10"))
    assert buckets.leaves_at(spent_in) == utc("2026-05-01T12:01:00")  # a bucket late at most, never early
    assert buckets.leaves_at(spent_in) - utc("2026-05-01T11:00:59.999") >= timedelta(hours=1)
    assert RollingBuckets.of(timedelta(minutes=1)).bucket_ms == 1000 and ROLLING_BUCKETS == 60
