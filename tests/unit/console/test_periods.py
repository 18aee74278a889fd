from datetime import UTC, datetime, timedelta

import pytest

from services.console.periods import parse_range, preset, rollup_spans

NOW = datetime(2026, 11, 28, 14, 37, 12, tzinfo=UTC)


def test_presets_are_the_whole_hours_that_began_in_that_time_with_the_current_one():
    day = preset("24h", NOW)
    assert (day.start, day.end) == (datetime(2026, 11, 27, 15, tzinfo=UTC), datetime(2026, 11, 28, 15, tzinfo=UTC))
    assert len(day.hours()) == 24
    hour = parse_range("1h", None, None, NOW)
    assert (hour.start, hour.end) == (datetime(2026, 11, 28, 14, tzinfo=UTC), datetime(2026, 11, 28, 15, tzinfo=UTC))
    assert parse_range(None, None, None, NOW) == day


def test_a_custom_range_is_rounded_to_hours_and_read_as_utc():
    window = parse_range("custom", "2026-11-01", "2026-11-02T05:30+01:00", NOW)
    assert window.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert window.end == datetime(2026, 11, 2, 4, tzinfo=UTC)


@pytest.mark.parametrize(("name", "start", "end", "says"), [
    ("week", None, None, "range must be one of"),
    ("custom", "2026-11-01", None, "needs a start and an end"),
    ("custom", "yesterday", "2026-11-02", "start must be a date"),
    ("custom", "2026-11-02", "2026-11-02T00:30", "at least an hour"),
    ("custom", "2024-01-01", "2026-11-02", "at most 400 days"),
])
def test_a_wrong_range_says_what_is_wrong(name, start, end, says):
    with pytest.raises(ValueError, match=says):
        parse_range(name, start, end, NOW)


def covered_hours(spans):
    hours = []
    for period, first, end in spans:
        step = timedelta(hours=1) if period == "hour" else timedelta(days=1)
        at = first
        while at < end:
            hours.extend(at + timedelta(hours=h) for h in range(1 if period == "hour" else 24))
            at += step
    return hours


@pytest.mark.parametrize(("start", "end"), [
    (datetime(2026, 11, 27, 15, tzinfo=UTC), datetime(2026, 11, 28, 15, tzinfo=UTC)),
    (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 29, tzinfo=UTC)),
    (datetime(2026, 11, 28, 3, tzinfo=UTC), datetime(2026, 11, 28, 9, tzinfo=UTC)),
    (datetime(2026, 10, 29, 15, tzinfo=UTC), datetime(2026, 11, 28, 15, tzinfo=UTC)),
])
def test_rollup_spans_cover_every_hour_once_with_days_where_whole(start, end):
    spans = rollup_spans(start, end)
    hours = covered_hours(spans)
    assert hours == [start + timedelta(hours=h) for h in range(int((end - start) / timedelta(hours=1)))]
    days = [span for span in spans if span[0] == "day"]
    assert all(span[1].hour == 0 and span[2].hour == 0 for span in days)
    assert len(spans) <= 3


def test_thirty_days_read_mostly_day_buckets():
    spans = rollup_spans(*(lambda w: (w.start, w.end))(preset("30d", NOW)))
    assert [period for period, _, _ in spans] == ["hour", "day", "hour"]
    assert (spans[1][2] - spans[1][1]).days == 29
