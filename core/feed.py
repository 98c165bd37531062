"""The change feed: one place where ingest publishes what changed, for journeys and scoring.

Changes are written to an outbox table in the same transaction as the change itself, so a
consumer never sees a change that was rolled back and never misses one that was committed:
changes are numbered in commit order, and each consumer reads past its own cursor, which one
dispatcher at a time holds (a row lock; other dispatchers skip it). A commit that published
changes asks for a dispatch at once (see `on_commit_dispatch`); the beat's periodic dispatch
is the safety net.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String, Uuid, event, func, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.clock import clock
from core.db import bulk_insert, dialect_insert, is_postgres, session_scope
from core.models import Base, BigIntId, table_of, utcnow

log = logging.getLogger(__name__)

EVENT_STORED = "event_stored"
TRAITS_CHANGED = "traits_changed"
CONTACT_MERGED = "contact_merged"

_PUBLISHED_KEY = "nurture_feed_published"
_SELECTED_KEY = "nurture_feed_selected"
# Held from numbering a transaction's changes until it commits; any constant key will do.
_NUMBERING_LOCK = 0x6E75727475726546
_NUMBER_ON_POSTGRES = text(
    "UPDATE change_feed SET position = numbered.position FROM ("
    " SELECT id, nextval('change_feed_id_seq') AS position"
    " FROM (SELECT id FROM change_feed WHERE position IS NULL ORDER BY id) AS own"
    ") AS numbered WHERE change_feed.id = numbered.id"
)
# SQLite's writers take turns and its ids are never reused (AUTOINCREMENT): ids are in order.
_NUMBER_ON_SQLITE = text("UPDATE change_feed SET position = id WHERE position IS NULL")


class ChangeRecord(Base):
    """One change. Its `position` is given when its transaction commits, in commit order:
    PostgreSQL hands ids out at insert, so a change could become visible after one with a
    higher id and a consumer reading by id would skip it."""

    __tablename__ = "change_feed"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    position: Mapped[int | None] = mapped_column(BigInteger, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeedCursor(Base):
    """Where a consumer is: `last_id` is the position of the last change it was handed."""

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
_after: dict[str, tuple[str, ...]] = {}
_dispatch_trigger: Callable[[], None] | None = None


def subscribe(consumer: str, handler: Handler, after: Sequence[str] = ()) -> None:
    """Consumers are handed changes in the order they subscribed. A consumer `after` others
    is handed a change only once they have handled it (and committed what they made of it)."""
    _subscribers[consumer] = handler
    _after[consumer] = tuple(after)


def on_commit_dispatch(trigger: Callable[[], None] | None) -> None:
    """Sets what runs after each commit that published changes (the worker enqueues one
    coalesced dispatch task); None turns it off."""
    global _dispatch_trigger
    _dispatch_trigger = trigger


def publish(session: Session, changes: Iterable[Change]) -> None:
    now = clock.now()
    rows = [
        {"kind": c.kind, "contact_id": c.contact_id, "payload": c.payload, "created_at": now}
        for c in changes
    ]
    if rows:
        bulk_insert(session, table_of(ChangeRecord), rows)
        session.info[_PUBLISHED_KEY] = True


def publish_selected(session: Session, changes: str, params: dict[str, Any]) -> None:
    """Publishes, when the transaction commits, the changes a SELECT of (kind, contact_id,
    payload) rows yields then (PostgreSQL only; they come after the transaction's other
    changes). Computed in the database and inserted already numbered, thousands of changes
    cost one statement instead of rows sent one by one and numbered by an UPDATE."""
    session.info.setdefault(_SELECTED_KEY, []).append((changes, params))
    session.info[_PUBLISHED_KEY] = True


def _insert_selected(session: Session) -> None:
    now = clock.now()
    for changes, params in session.info.pop(_SELECTED_KEY, []):
        session.execute(
            text(
                "INSERT INTO change_feed (id, position, kind, contact_id, payload, created_at)"
                " SELECT numbered.id, numbered.id, kind, contact_id, payload,"
                " CAST(:feed_now AS timestamptz) FROM ("
                " SELECT nextval('change_feed_id_seq') AS id, changes.*"
                f" FROM ({changes}) AS changes(kind, contact_id, payload)) AS numbered"
            ),
            {**params, "feed_now": now},
        )


@event.listens_for(Session, "before_commit")
def _number_changes(session: Session) -> None:
    """Numbers this transaction's changes last thing before it commits, one transaction at a
    time, so positions follow commit order (the lock waits only for others' commits)."""
    if not session.info.get(_PUBLISHED_KEY):
        return
    if is_postgres(session):
        session.execute(select(func.pg_advisory_xact_lock(_NUMBERING_LOCK)))
        session.execute(_NUMBER_ON_POSTGRES)
        _insert_selected(session)
    else:
        session.execute(_NUMBER_ON_SQLITE)


@event.listens_for(Session, "after_commit")
def _request_dispatch(session: Session) -> None:
    if session.info.pop(_PUBLISHED_KEY, False) and _dispatch_trigger is not None:
        try:
            _dispatch_trigger()
        except Exception:
            # The committed changes are safe in the outbox; the beat dispatches them.
            log.exception("could not request a change-feed dispatch")


@event.listens_for(Session, "after_soft_rollback")
def _forget_published(session: Session, _previous: Any) -> None:
    session.info.pop(_PUBLISHED_KEY, None)
    session.info.pop(_SELECTED_KEY, None)


def read_since(session: Session, last_id: int, limit: int) -> list[ChangeRecord]:
    stmt = select(ChangeRecord).where(ChangeRecord.id > last_id).order_by(ChangeRecord.id)
    return list(session.scalars(stmt.limit(limit)))


def claim_cursor(session: Session, consumer: str) -> FeedCursor | None:
    """The consumer's cursor, locked until this transaction ends; None while another
    dispatcher holds it (that one hands the consumer its changes)."""
    query = (
        select(FeedCursor)
        .where(FeedCursor.consumer == consumer)
        .execution_options(populate_existing=True)
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    cursor = session.scalar(query)
    if cursor is not None:
        return cursor
    created = session.execute(
        dialect_insert(session, FeedCursor)
        .values(consumer=consumer, last_id=0)
        .on_conflict_do_nothing(index_elements=["consumer"])
        .returning(FeedCursor.consumer)
    ).first()
    return session.scalar(query) if created is not None else None


def unseen(session: Session, cursor: FeedCursor, limit: int) -> list[ChangeRecord]:
    """The next committed changes after the cursor, in commit order, up to where the
    consumers it comes after have got."""
    query = select(ChangeRecord).where(ChangeRecord.position > cursor.last_id)
    first = [c for c in _after.get(cursor.consumer, ()) if c in _subscribers]
    if first:
        cursors, reached = session.execute(
            select(func.count(), func.min(FeedCursor.last_id)).where(FeedCursor.consumer.in_(first))
        ).one()
        query = query.where(ChangeRecord.position <= (reached if cursors == len(first) else 0))
    return list(session.scalars(query.order_by(ChangeRecord.position).limit(limit)))


def dispatch_to(session: Session, consumer: str, limit: int = 1000) -> int:
    """Hands one consumer the changes it has not seen yet (unless another dispatcher holds it)
    and moves its cursor past them; returns how many were handed. Flushes; the caller
    commits, which is when the cursor's move becomes final."""
    handler = _subscribers[consumer]
    cursor = claim_cursor(session, consumer)
    if cursor is None:
        return 0
    records = unseen(session, cursor, limit)
    if not records:
        return 0
    handler(session, records)
    last = records[-1].position
    assert last is not None  # only numbered (committed) changes are read
    cursor.last_id = last
    session.flush()
    return len(records)


def dispatch(session: Session, limit: int = 1000) -> int:
    """Hands each subscriber, in this one transaction, the changes it has not seen yet;
    returns how many were handed. A consumer that fails fails the whole transaction: use
    `dispatch_each` to keep the others going."""
    return sum(dispatch_to(session, consumer, limit) for consumer in list(_subscribers))


def behind() -> list[str]:
    """The consumers that may have changes to be handed (read without locking anything, so
    that a dispatch with nothing to do costs one query)."""
    newer = select(ChangeRecord.id).where(ChangeRecord.position > FeedCursor.last_id).exists()
    with session_scope() as session:
        caught_up = set(session.scalars(select(FeedCursor.consumer).where(~newer)))
    return [consumer for consumer in _subscribers if consumer not in caught_up]


def dispatch_each(limit: int = 1000) -> int:
    """Hands each subscriber everything it has not seen, in transactions of its own: a
    consumer that fails is rolled back alone (its cursor stays, so it is retried next time)
    and does not hold the others up. Returns how many changes were handed."""
    handed = 0
    for consumer in behind():
        while True:
            try:
                with session_scope() as session:
                    count = dispatch_to(session, consumer, limit)
            except Exception:
                log.exception("change-feed consumer %s failed; it will be retried", consumer)
                break
            handed += count
            if count < limit:
                break
    return handed
