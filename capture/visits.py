"""Visits (sessions): a run of a contact's events with no gap longer than the timeout.

A visit starts when the gap is exceeded or when a message arrives with campaign data that
differs from the current visit's (a new ad click is a new visit, as in GA). Its first page's
URL and referrer decide the visit's channel, source and campaign.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from capture.copy_text import copy_lines, text_value, time_value
from capture.enrichment import CLICK_ID_KINDS, Touch, touch_for
from capture.models import Visit
from core.db import bulk_insert, bulk_update, is_postgres
from core.models import table_of
from core.settings import get_settings

if TYPE_CHECKING:
    from capture.parsing import Message

DIRECT = Touch("direct", None, None, None, None, None, None, None, None)


@dataclass
class OpenVisit:
    id: uuid.UUID
    source_id: uuid.UUID
    contact_id: uuid.UUID
    started_at: datetime
    last_event_at: datetime
    channel: str
    utm_source: str | None
    utm_campaign: str | None
    click_id: str | None
    page_views: int
    event_count: int
    is_new: bool = False


OPEN_VISIT_COLUMNS = (
    "id",
    "source_id",
    "contact_id",
    "started_at",
    "last_event_at",
    "channel",
    "utm_source",
    "utm_campaign",
    "click_id",
    "page_views",
    "event_count",
)
# One index probe per contact on (contact_id, last_event_at): as a plain join the planner
# (expecting 100 ids) would read the whole index.
LATEST_VISITS = text(
    "SELECT "
    + ", ".join(f"t.{column}" for column in OPEN_VISIT_COLUMNS)
    + " FROM json_array_elements_text(CAST(:ids AS json)) AS v(value)"
    " CROSS JOIN LATERAL (SELECT * FROM visits WHERE contact_id = CAST(v.value AS uuid)"
    " ORDER BY last_event_at DESC LIMIT 1) AS t"
)


def assign_visits(session: Session, messages: list[Message], ids: Iterator[uuid.UUID]) -> None:
    """Sets visit_id, channel and (for visit-opening messages) touch on each message, then
    writes new and extended visits in bulk; new visits take their ids from `ids`. Messages
    must be in timestamp order."""
    write_visits(session, plan_visits(session, messages, ids), messages)


def plan_visits(
    session: Session, messages: list[Message], ids: Iterator[uuid.UUID]
) -> list[OpenVisit]:
    """assign_visits up to the writing: returns the new and extended visits to write."""
    timeout = timedelta(minutes=get_settings().session_timeout_minutes)
    current = latest_visits(session, {m.contact_id for m in messages})
    touched: dict[uuid.UUID, OpenVisit] = {}
    for m in messages:
        visit = current.get(m.contact_id)
        in_session = visit is not None and m.timestamp - visit.last_event_at <= timeout
        if m.url is None and not in_session:
            continue  # a server-side call outside any visit belongs to no visit
        touch = m.campaign_touch
        if touch is None and m.url is not None and not in_session:
            touch = _touch_of_page(m.url, m.referrer)
        if not in_session or (touch is not None and _new_campaign(touch, visit)):
            touch = touch or DIRECT
            visit = _open(m, touch, next(ids))
            current[m.contact_id] = visit
            m.touch = touch
        assert visit is not None
        visit.last_event_at = max(visit.last_event_at, m.timestamp)
        visit.event_count += 1
        visit.page_views += 1 if m.type == "page" else 0
        m.visit_id = visit.id
        m.channel = visit.channel
        touched[visit.id] = visit
    return list(touched.values())


def latest_visits(session: Session, contact_ids: set[uuid.UUID]) -> dict[uuid.UUID, OpenVisit]:
    """Each contact's latest visit, as plain rows (no ORM objects on the hot path)."""
    if not contact_ids:
        return {}
    visits = table_of(Visit)
    columns = [visits.c[name] for name in OPEN_VISIT_COLUMNS]
    found: dict[uuid.UUID, OpenVisit] = {}
    ids = list(contact_ids)
    if is_postgres(session):
        # The ids as one JSON parameter (see capture.ingest).
        rows: Any = session.execute(
            LATEST_VISITS,
            {"ids": orjson.dumps(ids).decode()},
        )
        return {row[2]: OpenVisit(*row) for row in rows}
    newer = visits.alias()
    latest_time = (
        select(func.max(newer.c.last_event_at))
        .where(newer.c.contact_id == visits.c.contact_id)
        .scalar_subquery()
    )
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(*columns).where(
                visits.c.contact_id.in_(ids[start : start + 500]),
                visits.c.last_event_at == latest_time,
            )
        )
        found.update((row[2], OpenVisit(*row)) for row in rows)
    return found


def campaign_touch(message: Message) -> Touch | None:
    """The touch of a page view carrying campaign data, which may open a visit mid-session.
    Ingest works it out while parsing, on the helper thread: parsing the URLs is the costliest
    part of sessionizing, and every such touch is needed."""
    if message.url is None or not _may_start_campaign(message):
        return None
    campaign = _campaign(message)
    if campaign:
        return touch_for(message.url, message.referrer, campaign)
    return _touch_of_page(message.url, message.referrer)


@lru_cache(maxsize=8192)
def _touch_of_page(url: str, referrer: str | None) -> Touch:
    # Landing URLs and referrers repeat across visitors (the same ad, the same search page).
    return touch_for(url, referrer)


def _may_start_campaign(message: Message) -> bool:
    """Cheap test that spares parsing the URL of the many in-session page views with no
    campaign data; only a message with campaign data can open a new visit mid-session."""
    url = message.url or ""
    return _campaign(message) is not None or (
        # Campaign parameters come in the query string, which most in-session pages have none of.
        "?" in url and ("utm_" in url or any(kind.param in url for kind in CLICK_ID_KINDS))
    )


def _campaign(message: Message) -> dict[str, Any] | None:
    campaign = message.context.get("campaign")
    return campaign if isinstance(campaign, dict) else None


def _new_campaign(touch: Touch, visit: OpenVisit | None) -> bool:
    if visit is None or not (touch.campaign or touch.click_id or touch.medium):
        return False
    return (touch.source, touch.campaign, touch.click_id) != (
        visit.utm_source,
        visit.utm_campaign,
        visit.click_id,
    )


def _open(message: Message, touch: Touch, id_: uuid.UUID) -> OpenVisit:
    visit = OpenVisit(
        id=id_,
        source_id=message.source_id,
        contact_id=message.contact_id,
        started_at=message.timestamp,
        last_event_at=message.timestamp,
        channel=touch.channel,
        utm_source=touch.source,
        utm_campaign=touch.campaign,
        click_id=touch.click_id,
        page_views=0,
        event_count=0,
        is_new=True,
    )
    return visit


NEW_VISIT_COLUMNS = (
    "id",
    "contact_id",
    "source_id",
    "started_at",
    "last_event_at",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "click_id_kind",
    "click_id",
    "landing_url",
    "referrer",
    "page_views",
    "event_count",
)


def write_visits(session: Session, visits: list[OpenVisit], messages: list[Message]) -> None:
    openers = {m.visit_id: m for m in messages if m.touch is not None}
    new_rows: list[tuple[Any, ...]] = []
    changed_rows = []
    for v in visits:
        if v.is_new:
            opener = openers[v.id]
            touch = opener.touch
            assert touch is not None
            new_rows.append(
                (
                    v.id,
                    v.contact_id,
                    v.source_id,
                    v.started_at,
                    v.last_event_at,
                    v.channel,
                    touch.source,
                    touch.medium,
                    touch.campaign,
                    touch.term,
                    touch.content,
                    touch.click_id_kind,
                    touch.click_id,
                    opener.url,
                    opener.referrer,
                    v.page_views,
                    v.event_count,
                )
            )
        else:
            changed_rows.append(
                {
                    "id": v.id,
                    "last_event_at": v.last_event_at,
                    "page_views": v.page_views,
                    "event_count": v.event_count,
                }
            )
    if new_rows and is_postgres(session):
        copy_lines(session, "visits", NEW_VISIT_COLUMNS, [_visit_line(row) for row in new_rows])
    elif new_rows:
        bulk_insert(
            session,
            table_of(Visit),
            [dict(zip(NEW_VISIT_COLUMNS, row, strict=True)) for row in new_rows],
        )
    bulk_update(session, table_of(Visit), changed_rows)


def _visit_line(row: tuple[Any, ...]) -> str:
    (id_, contact_id, source_id, started_at, last_event_at, *texts, page_views, event_count) = row
    return "\t".join(
        (
            id_.hex,
            contact_id.hex,
            source_id.hex,
            time_value(started_at),
            time_value(last_event_at),
            *(text_value(value) for value in texts),
            str(page_views),
            str(event_count),
        )
    )
