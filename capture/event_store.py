"""Storing an ingest batch's events and announcing them on the change feed.

On PostgreSQL the events are COPYed straight into the table with ids drawn from its sequence
beforehand; a COPY that hits a messageId another worker stored meanwhile is undone (a
savepoint) and the batch goes the careful way instead: staging table and INSERT … ON CONFLICT
DO NOTHING. Elsewhere one INSERT … ON CONFLICT DO NOTHING. On PostgreSQL the `event_stored`
changes are selected from the stored rows as the transaction commits (`feed.publish_selected`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from capture.copy_text import NULL, copy_lines, json_value, text_value, uuid_value
from capture.models import Event
from core import feed
from core.db import insert_new, is_postgres
from core.models import table_of

if TYPE_CHECKING:
    from capture.parsing import Message

EVENT_COLUMNS = (
    "source_id",
    "message_id",
    "type",
    "name",
    "anonymous_id",
    "user_id",
    "properties",
    "context",
    "timestamp",
    "original_timestamp",
    "received_at",
    "url",
    "path",
    "referrer",
    "device_type",
    "os",
    "browser",
    "ip",
    # Known only once the batch is resolved; the columns before are rendered at parse time.
    "contact_id",
    "visit_id",
    "channel",
)


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
        m.type,
        m.name,
        m.anonymous_id,
        m.user_id,
        m.traits if m.type == "identify" else m.properties,
        m.context,
        m.timestamp,
        m.original_timestamp,
        m.received_at,
        m.url,
        m.path,
        m.referrer,
        m.device.device_type,
        m.device.os,
        m.device.browser,
        m.ip,
        m.contact_id,
        m.visit_id,
        m.channel,
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
    lines = event_lines(messages)
    # The sequence named as a literal: pg_get_serial_sequence() would be called once per row.
    ids: list[int] = session.scalar(
        text("SELECT array_agg(nextval('events_id_seq')) FROM generate_series(1, :n)"),
        {"n": len(lines)},
    )
    try:
        with session.begin_nested():
            copy_lines(
                session,
                "events",
                ("id", *EVENT_COLUMNS),
                [f"{event_id}\t{line}" for event_id, line in zip(ids, lines, strict=True)],
            )
    except psycopg.errors.UniqueViolation:
        return _insert_new_events(session, lines)
    return [
        StoredEvent(event_id, m.source_id, m.message_id, m.contact_id, m.type, m.name)
        for event_id, m in zip(ids, messages, strict=True)
    ]


def parsed_event_text(m: Message) -> str:
    """The message's event up to its contact, visit and channel, as COPY text (EVENT_COLUMNS);
    times go as the envelope's ISO 8601 strings the message was parsed from."""
    value = text_value
    return "\t".join(
        (
            m.source_id.hex,
            value(m.message_id),
            value(m.type),
            value(m.name),
            value(m.anonymous_id),
            value(m.user_id),
            json_value(m.traits if m.type == "identify" else m.properties),
            json_value(m.context),
            m.envelope["timestamp"],
            m.envelope.get("originalTimestamp") or NULL,
            m.envelope["receivedAt"],
            value(m.url),
            value(m.path),
            value(m.referrer),
            value(m.device.device_type),
            value(m.device.os),
            value(m.device.browser),
            value(m.ip),
        )
    )


def event_lines(messages: list[Message]) -> list[str]:
    """Each message's event as a line of COPY text (EVENT_COLUMNS)."""
    return [
        f"{m.parsed_event_text}\t{m.contact_id.hex}\t{uuid_value(m.visit_id)}"
        f"\t{text_value(m.channel)}"
        for m in messages
    ]


def _insert_new_events(session: Session, lines: list[str]) -> list[StoredEvent]:
    columns = ", ".join(EVENT_COLUMNS)
    session.execute(
        text(
            "CREATE TEMP TABLE IF NOT EXISTS staging_ingest_events ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM events WITH NO DATA"
        )
    )
    copy_lines(session, "staging_ingest_events", EVENT_COLUMNS, lines)
    stored = session.execute(
        text(
            f"INSERT INTO events ({columns}) SELECT {columns} FROM staging_ingest_events "
            "ON CONFLICT (message_id, source_id) DO NOTHING "
            f"RETURNING {', '.join(StoredEvent._fields)}"
        )
    ).all()
    session.execute(text("TRUNCATE staging_ingest_events"))
    return [StoredEvent(*row) for row in stored]


# The changes of the stored events, in the order they were stored, from what their INSERT
# returned: (contact id, payload) pairs as one JSON document, which PostgreSQL reads far faster
# than it would look each event up again.
_STORED_CHANGES = (
    "SELECT CAST(:kind AS varchar), CAST(r->>0 AS uuid), CAST(r->1 AS jsonb)"
    " FROM json_array_elements(CAST(:changes AS json)) WITH ORDINALITY AS s(r, n) ORDER BY n"
)


def publish_stored(session: Session, stored: list[StoredEvent]) -> None:
    """One `event_stored` change per stored event, in the order the events were stored."""
    if is_postgres(session):
        if stored:
            changes = orjson.dumps(
                [
                    (row.contact_id, {"event_id": row.id, "type": row.type, "name": row.name})
                    for row in stored
                ]
            ).decode()
            feed.publish_selected(
                session, _STORED_CHANGES, {"kind": feed.EVENT_STORED, "changes": changes}
            )
        return
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
