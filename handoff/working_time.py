"""Working-time arithmetic in a rep's own time zone: whether a moment is inside their hours,
and the moment a number of working minutes after another."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

MAX_DAYS_SEARCHED = 366


@dataclass(frozen=True)
class WorkingHours:
    zone: ZoneInfo
    days: frozenset[int]  # ISO weekdays, Monday = 1
    start: time
    end: time

    @classmethod
    def of(cls, timezone: str, days: list[int], start: str, end: str) -> WorkingHours:
        return cls(ZoneInfo(timezone), frozenset(days), parse_hhmm(start), parse_hhmm(end))

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        return local.isoweekday() in self.days and self.start <= local.time() < self.end

    def add(self, at: datetime, minutes: int) -> datetime:
        """The moment `minutes` of working time after `at` (time outside the hours stops the
        clock); raises ValueError when the hours hold no working time at all."""
        remaining = timedelta(minutes=minutes)
        day = at.astimezone(self.zone).date()
        for _ in range(MAX_DAYS_SEARCHED):
            if day.isoweekday() in self.days:
                opens = datetime.combine(day, self.start, self.zone)
                closes = datetime.combine(day, self.end, self.zone)
                begin = max(opens, at)
                if begin < closes:
                    if begin + remaining <= closes:
                        return (begin + remaining).astimezone(UTC)
                    remaining -= closes - begin
            day += timedelta(days=1)
        raise ValueError("the working hours hold no working time")


def parse_hhmm(value: str) -> time:
    hours, _, minutes = value.partition(":")
    return time(int(hours), int(minutes))
