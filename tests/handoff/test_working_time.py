"""Working-time arithmetic in the rep's own time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from handoff.working_time import WorkingHours

SHANGHAI_WEEKDAYS = WorkingHours.of("Asia/Shanghai", [1, 2, 3, 4, 5], "09:00", "18:00")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_minutes_inside_the_day_are_plain_minutes() -> None:
    # Monday 10:00 Shanghai is 02:00 UTC.
    assert SHANGHAI_WEEKDAYS.add(utc(2026, 3, 2, 2, 0), 15) == utc(2026, 3, 2, 2, 15)


def test_the_clock_stops_at_closing_and_restarts_next_morning() -> None:
    # Monday 17:55 Shanghai: 5 minutes today, 10 more from Tuesday 09:00.
    assert SHANGHAI_WEEKDAYS.add(utc(2026, 3, 2, 9, 55), 15) == utc(2026, 3, 3, 1, 10)


def test_weekends_do_not_count() -> None:
    # Friday 17:50 Shanghai → Monday 09:05.
    assert SHANGHAI_WEEKDAYS.add(utc(2026, 3, 6, 9, 50), 15) == utc(2026, 3, 9, 1, 5)


def test_before_opening_the_clock_starts_at_opening() -> None:
    # Monday 07:00 Shanghai (Sunday 23:00 UTC) → 09:15.
    assert SHANGHAI_WEEKDAYS.add(utc(2026, 3, 1, 23, 0), 15) == utc(2026, 3, 2, 1, 15)


def test_hours_are_read_in_the_reps_time_zone() -> None:
    berlin = WorkingHours.of("Europe/Berlin", [1, 2, 3, 4, 5], "09:00", "17:00")
    monday_10_shanghai = utc(2026, 3, 2, 2, 0)  # 03:00 in Berlin
    assert SHANGHAI_WEEKDAYS.contains(monday_10_shanghai)
    assert not berlin.contains(monday_10_shanghai)
    assert berlin.add(monday_10_shanghai, 15) == utc(2026, 3, 2, 8, 15)


def test_hours_without_working_days_are_refused() -> None:
    never = WorkingHours.of("Asia/Shanghai", [], "09:00", "18:00")
    with pytest.raises(ValueError, match="no working time"):
        never.add(utc(2026, 3, 2, 2, 0), 15)
