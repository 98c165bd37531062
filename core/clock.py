"""The one source of 'now': real time in production, a clock tests can set and move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    def __init__(self) -> None:
        self._frozen: datetime | None = None

    def now(self) -> datetime:
        return self._frozen if self._frozen is not None else datetime.now(UTC)

    def freeze(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("a frozen time must be timezone-aware")
        self._frozen = at

    def advance(self, delta: timedelta) -> None:
        self._frozen = self.now() + delta

    def unfreeze(self) -> None:
        self._frozen = None


clock = Clock()
