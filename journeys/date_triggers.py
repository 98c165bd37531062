"""Date-trait entry triggers ("3 days before `trial_ends_at`, at 09:00"): a pass, run often
by beat, that enrolls the contacts whose date trait plus the offset falls on today in their
own time zone, once the trigger's time of day has come there (a pass later that local day
still enrolls them; a local day with no pass at all is missed).

Contacts are chosen by one query per journey: time zones sharing the same local day (and
hour offsets) are grouped, and each group's window is a CASE branch on the contact's zone.
A contact enters at most once per journey and date value: the enrollment carries the entry
key `<trait>=<local date of the trait>`, held by a unique index, so a second pass, a
restarted scheduler or two schedulers at once enroll nobody twice."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import ColumnElement, and_, case, false, func, or_, select, text
from sqlalchemy.orm import Session

from capture.models import Contact
from core.clock import clock
from core.db import is_postgres
from journeys import engine
from journeys.conditions import Compiler
from journeys.definition import DATE_TRAIT, DEFAULT_TRIGGER_TIME
from journeys.models import Enrollment, Journey, JourneyTrigger, JourneyVersion

ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class DateTrigger:
    trait: str
    offset_days: int
    at: time

    @classmethod
    def of(cls, trigger: dict[str, Any]) -> DateTrigger:
        hour, minute = (int(part) for part in trigger.get("time", DEFAULT_TRIGGER_TIME).split(":"))
        return cls(trigger["trait"], trigger.get("offset_days", 0), time(hour, minute))


@dataclass(frozen=True)
class Window:
    """Where a date trait must fall for contacts of some zones today: the local date (for a
    date-only trait) and the UTC instants bounding that local day (for a date-time)."""

    day: date
    start: datetime
    end: datetime


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


@lru_cache(maxsize=1)
def known_zones() -> frozenset[str]:
    return frozenset(zone_names())


def zone(name: str | None) -> ZoneInfo:
    """The contact's time zone; Asia/Shanghai when unknown or invalid."""
    try:
        return ZoneInfo(name or engine.DEFAULT_TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(engine.DEFAULT_TIMEZONE)


def window(now: datetime, where: ZoneInfo, trigger: DateTrigger) -> Window | None:
    """The trait's window for contacts in the zone, or None before the time of day there."""
    local_now = now.astimezone(where)
    if local_now.time() < trigger.at:
        return None
    day = local_now.date() - timedelta(days=trigger.offset_days)
    start = datetime.combine(day, time(0), tzinfo=where)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=where)
    return Window(day, start.astimezone(UTC), end.astimezone(UTC))


def entry_key(trait: str, day: date) -> str:
    return f"{trait}={day.isoformat()}"


def start_due(session: Session) -> int:
    """Enrolls every contact whose date trigger is due now in a published journey; returns
    how many went in."""
    rows = session.execute(
        select(Journey, JourneyVersion.definition)
        .join(JourneyTrigger, JourneyTrigger.journey_id == Journey.id)
        .join(JourneyVersion, JourneyVersion.id == Journey.live_version_id)
        .where(JourneyTrigger.kind == DATE_TRAIT, Journey.status == "published")
        .order_by(Journey.id)
    ).all()
    now = clock.now()
    entered = 0
    for journey, definition in rows:
        trigger = DateTrigger.of(definition["trigger"])
        keys = due_contacts(session, journey.id, trigger, now)
        entered += len(engine.enroll(session, journey, keys, entry_keys=keys))
    return entered


def due_contacts(
    session: Session, journey_id: uuid.UUID, trigger: DateTrigger, now: datetime
) -> dict[uuid.UUID, str]:
    """The contacts the trigger enrolls now, with their entry keys: one query over
    contacts, less those who already entered for that date value."""
    groups: dict[Window | None, list[str]] = defaultdict(list)
    for name in zone_names():
        groups[window(now, ZoneInfo(name), trigger)].append(name)
    fallback = window(now, zone(None), trigger)
    days = [w.day for w in (*groups, fallback) if w is not None]
    if not days:
        return {}
    if is_postgres(session):
        # Compiling the zone CASE for a whole-table scan takes PostgreSQL's JIT many seconds;
        # evaluated plainly it runs only for the contacts the band lets through.
        session.execute(text("SET LOCAL jit = off"))
    value = Compiler(now, is_postgres(session)).trait_text(trigger.trait)
    # A cheap band first, so the zone CASE runs only for the few contacts near the date.
    band = func.substr(value, 1, 10)
    fits = case(
        *[(Contact.timezone.in_(names), _fits(value, w)) for w, names in groups.items()],
        else_=_fits(value, fallback),
    )
    matched = session.execute(
        select(Contact.id, Contact.timezone).where(
            Contact.merged_into_id.is_(None),
            band >= (min(days) - timedelta(days=1)).isoformat(),
            band <= (max(days) + timedelta(days=1)).isoformat(),
            fits,
        )
    ).all()
    day_of_zone = {name: w.day for w, names in groups.items() if w is not None for name in names}

    def day_of(zone_name: str | None) -> date | None:
        if zone_name in known_zones():
            return day_of_zone.get(zone_name)
        return fallback.day if fallback is not None else None

    keys = {
        contact_id: entry_key(trigger.trait, day)
        for contact_id, zone_name in matched
        if (day := day_of(zone_name)) is not None
    }
    if not keys:
        return {}
    entered = set(
        session.execute(
            select(Enrollment.contact_id, Enrollment.entry_key).where(
                Enrollment.journey_id == journey_id,
                Enrollment.entry_key.in_(set(keys.values())),
            )
        ).all()
    )
    return {c: key for c, key in keys.items() if (c, key) not in entered}


def _fits(value: ColumnElement[str], w: Window | None) -> ColumnElement[bool]:
    """Whether the trait falls in the window: a date on the day, or a date-time (ISO-8601 in
    UTC, compared as text) within the local day."""
    if w is None:
        return false()
    return or_(
        and_(func.length(value) == 10, value == w.day.isoformat()),
        and_(
            func.length(value) > 10,
            value >= w.start.strftime(ISO_SECONDS),
            value < w.end.strftime(ISO_SECONDS),
        ),
    )


def explain(trigger: dict[str, Any], traits: dict[str, Any], zone_name: str | None) -> str:
    """When the trigger would enroll a contact with these traits (the dry run)."""
    spec = DateTrigger.of(trigger)
    raw = traits.get(spec.trait)
    where = zone(zone_name)
    if spec.offset_days < 0:
        when = f"{-spec.offset_days} days before"
    elif spec.offset_days > 0:
        when = f"{spec.offset_days} days after"
    else:
        when = "on the day of"
    rule = f"enters {when} {spec.trait} at {spec.at:%H:%M} {where.key}"
    day = trait_day(raw, where)
    if day is None:
        return f"{rule}; this contact has no readable {spec.trait} ({raw!r}), so never"
    fires = day + timedelta(days=spec.offset_days)
    return f"{rule}: {spec.trait} is {day.isoformat()} there, so on {fires.isoformat()}"


def trait_day(raw: Any, where: ZoneInfo) -> date | None:
    """The local date a date trait stands for, as the pass reads it."""
    if not isinstance(raw, str):
        return None
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(where).date()
