"""Touchpoints: the sessions (with their channel, UTM campaign and ad click id) and the email
and SMS clicks that capture and channels recorded, read per contact, oldest first.

A click on one of our messages opens a session on the site; the click is the touch and the
session it opened (same channel, within 30 minutes) is not counted a second time. A landing
with utm_medium=sms is a session on the sms channel (capture's channel rules), so an SMS
touch counts whether or not the click itself was recorded. Clicks channels flagged as made by
a machine (link scanners) are no touch.
"""

from __future__ import annotations

import bisect
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from attribution.models import Touch
from capture.models import Event, Visit

DEFAULT_LOOKBACK = timedelta(days=90)
# Channels name click events in snake case; Segment-style clients in title case.
CLICK_EVENTS = {
    "email_clicked": "email",
    "Email Clicked": "email",
    "sms_clicked": "sms",
    "SMS Clicked": "sms",
}
CLICK_OPENS_VISIT_WITHIN = timedelta(minutes=30)
_CONTACTS_PER_QUERY = 5000


@dataclass(frozen=True, slots=True)
class Touchpoint(Touch):
    """A touch and the record it came from: a visit id or a click event id."""

    source: str
    ref: str


def campaign_of_click(properties: dict[str, Any]) -> str | None:
    """Our messages are campaigns by their own campaign name, else by their journey."""
    if properties.get("campaign"):
        return str(properties["campaign"])
    journey = properties.get("journey_id") or properties.get("journey")
    return f"journey:{journey}" if journey else None


def load_touchpoints(
    session: Session,
    since: datetime,
    until: datetime,
    contact_ids: Collection[uuid.UUID] | None = None,
) -> dict[uuid.UUID, list[Touchpoint]]:
    """Every contact's touchpoints between since and until (all contacts when none are named)."""
    visits: dict[uuid.UUID, list[Touchpoint]] = defaultdict(list)
    clicks: dict[uuid.UUID, list[Touchpoint]] = defaultdict(list)
    for id_chunk in _chunks(contact_ids):
        visit_query = select(
            Visit.id, Visit.contact_id, Visit.started_at, Visit.channel, Visit.utm_campaign
        ).where(Visit.started_at >= since, Visit.started_at <= until)
        click_query = select(
            Event.id, Event.contact_id, Event.timestamp, Event.name, Event.properties
        ).where(Event.name.in_(CLICK_EVENTS), Event.timestamp >= since, Event.timestamp <= until)
        if id_chunk is not None:
            visit_query = visit_query.where(Visit.contact_id.in_(id_chunk))
            click_query = click_query.where(Event.contact_id.in_(id_chunk))
        for visit_id, contact_id, started_at, channel, campaign in session.execute(visit_query):
            visits[contact_id].append(
                Touchpoint(channel, campaign, started_at, "visit", str(visit_id))
            )
        for event_id, contact_id, at, name, properties in session.execute(click_query):
            if (properties or {}).get("machine") is True:
                continue
            channel = CLICK_EVENTS[name]
            clicks[contact_id].append(
                Touchpoint(
                    channel,
                    campaign_of_click(properties or {}),
                    at,
                    f"{channel}_click",
                    str(event_id),
                )
            )
    return {
        contact_id: _merge(visits.get(contact_id, []), clicks.get(contact_id, []))
        for contact_id in visits.keys() | clicks.keys()
    }


def within(
    touchpoints: list[Touchpoint], converted_at: datetime, lookback: timedelta
) -> tuple[Touchpoint, ...]:
    """The touchpoints (sorted oldest first) in the lookback window ending at the conversion."""
    times = [touch.at for touch in touchpoints]
    first = bisect.bisect_left(times, converted_at - lookback)
    last = bisect.bisect_right(times, converted_at)
    return tuple(touchpoints[first:last])


def _merge(visits: list[Touchpoint], clicks: list[Touchpoint]) -> list[Touchpoint]:
    opened = set()
    for click in clicks:
        for visit in visits:
            if (
                visit.channel == click.channel
                and click.at <= visit.at <= click.at + CLICK_OPENS_VISIT_WITHIN
            ):
                opened.add(visit.ref)
    kept = [visit for visit in visits if visit.ref not in opened]
    return sorted(kept + clicks, key=lambda touch: (touch.at, touch.ref))


def _chunks(contact_ids: Collection[uuid.UUID] | None) -> Iterator[list[uuid.UUID] | None]:
    if contact_ids is None:
        yield None
        return
    ids = list(contact_ids)
    for start in range(0, len(ids), _CONTACTS_PER_QUERY):
        yield ids[start : start + _CONTACTS_PER_QUERY]
