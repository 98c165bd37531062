"""The change feed: one place where ingest publishes what changed, for journeys and scoring.

Changes are written to an outbox table in the same transaction as the change itself, so a
consumer never sees a change that was rolled back and never misses one that was committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String, Uuid, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.clock import clock
from core.db import bulk_insert
from core.models import Base, BigIntId, table_of, utcnow

EVENT_STORED = "event_stored"
TRAITS_CHANGED = "traits_changed"
CONTACT_MERGED = "contact_merged"


class ChangeRecord(Base):
    __tablename__ = "change_feed"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeedCursor(Base):
    __tablename__ = "feed_cursors"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)


@dataclass(frozen=True)
class Change:
    kind: str
    contact_id: uuid.UUID
    payload: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Session, Sequence[ChangeRecord]], None]
_subscribers: dict[str, Handler] = {}


def subscribe(consumer: str, handler: Handler) -> None:
    _subscribers[consumer] = handler


def publish(session: Session, changes: Iterable[Change]) -> None:
    rows = [
        {
            "kind": c.kind,
            "contact_id": c.contact_id,
            "payload": c.payload,
            "created_at": clock.now(),
        }
        for c in changes
    ]
    if rows:
        bulk_insert(session, table_of(ChangeRecord), rows)


def read_since(session: Session, last_id: int, limit: int) -> list[ChangeRecord]:
    stmt = select(ChangeRecord).where(ChangeRecord.id > last_id).order_by(ChangeRecord.id)
    return list(session.scalars(stmt.limit(limit)))


def dispatch(session: Session, limit: int = 1000) -> int:
    """Hands each subscriber the changes it has not seen yet; returns how many were handed."""
    handed = 0
    for consumer, handler in _subscribers.items():
        cursor = session.get(FeedCursor, consumer, with_for_update=True)
        if cursor is None:
            cursor = FeedCursor(consumer=consumer, last_id=0)
            session.add(cursor)
        records = read_since(session, cursor.last_id, limit)
        if records:
            handler(session, records)
            cursor.last_id = records[-1].id
            handed += len(records)
    session.flush()
    return handed
