"""Storing an ingest batch's events and announcing them on the change feed.

On PostgreSQL the events are COPYed straight into the table with ids drawn from its sequence
beforehand; a COPY that hits a messageId another worker stored meanwhile is undone (a
savepoint) and the batch goes the careful way instead: staging table and INSERT … ON CONFLICT
DO NOTHING. Elsewhere one INSERT … ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from capture.models import Event
from core import feed
from core.db import copy_rows, insert_new, is_postgres
from core.models import table_of

if TYPE_CHECKING:
    from capture.ingest import Message

EVENT_COLUMNS = (
    "source_id",
    "message_id",
    "contact_id",
    "type",
    "name",
    "anonymous_id",
    "user_id",
    "properties",
    "context",
    "timestamp",
    "original_timestamp",
    "received_at",
    "visit_id",
    "url",
    "path",
    "referrer",
    "channel",
    "device_type",
    "os",
    "browser",
    "ip",
)
_JSON_AT = (EVENT_COLUMNS.index("properties"), EVENT_COLUMNS.index("context"))


class StoredEvent(NamedTuple):
    id: int
    source_id: uuid.UUID
    message_id: str
    contact_id: uuid.UUID
    type: str
    name: str | None


def event_row(m: Message) -> tuple[Any, ...]:
    return (
        m.source_id,
        m.message_id,
        m.contact_id,
        m.type,
        m.name,
        m.anonymous_id,
        m.user_id,
        m.traits if m.type == "identify" else m.properties,
        m.context,
        m.timestamp,
        m.original_timestamp,
        m.received_at,
        m.visit_id,
        m.url,
        m.path,
        m.referrer,
        m.channel,
        m.device.device_type,
        m.device.os,
        m.device.browser,
        m.ip,
    )


def insert_events(session: Session, messages: list[Message]) -> list[StoredEvent]:
    """Inserts the events whose messageId is not stored yet; returns those it stored."""
    if not messages:
        return []
    if not is_postgres(session):
        stored = insert_new(
            session,
            table_of(Event),
            [dict(zip(EVENT_COLUMNS, event_row(m), strict=True)) for m in messages],
            conflict_columns=("message_id", "source_id"),
            returning=StoredEvent._fields,
            owner_column="contact_id",
        )
        return [StoredEvent(*(getattr(row, f) for f in StoredEvent._fields)) for row in stored]
    rows = [_copy_row(m) for m in messages]
    ids = session.scalars(
        text("SELECT nextval(pg_get_serial_sequence('events', 'id')) FROM generate_series(1, :n)"),
        {"n": len(rows)},
    ).all()
    try:
        with session.begin_nested():
            copy_rows(
                session,
                "events",
                ("id", *EVENT_COLUMNS),
                ((event_id, *row) for event_id, row in zip(ids, rows, strict=True)),
            )
    except psycopg.errors.UniqueViolation:
        return _insert_new_events(session, rows)
    return [
        StoredEvent(event_id, m.source_id, m.message_id, m.contact_id, m.type, m.name)
        for event_id, m in zip(ids, messages, strict=True)
    ]


def _copy_row(m: Message) -> tuple[Any, ...]:
    row = list(event_row(m))
    for index in _JSON_AT:
        row[index] = orjson.dumps(row[index]).decode()
    return tuple(row)


def _insert_new_events(session: Session, rows: list[tuple[Any, ...]]) -> list[StoredEvent]:
    columns = ", ".join(EVENT_COLUMNS)
    session.execute(
        text(
            "CREATE TEMP TABLE IF NOT EXISTS staging_ingest_events ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM events WITH NO DATA"
        )
    )
    copy_rows(session, "staging_ingest_events", EVENT_COLUMNS, rows)
    stored = session.execute(
        text(
            f"INSERT INTO events ({columns}) SELECT {columns} FROM staging_ingest_events "
            "ON CONFLICT (message_id, source_id) DO NOTHING "
            f"RETURNING {', '.join(StoredEvent._fields)}"
        )
    ).all()
    session.execute(text("TRUNCATE staging_ingest_events"))
    return [StoredEvent(*row) for row in stored]


def publish_stored(session: Session, stored: list[StoredEvent]) -> None:
    """One `event_stored` change per stored event, in the order the events were stored."""
    feed.publish(
        session,
        (
            feed.Change(
                feed.EVENT_STORED,
                row.contact_id,
                {"event_id": row.id, "type": row.type, "name": row.name},
            )
            for row in stored
        ),
    )
