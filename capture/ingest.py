"""The ingest worker: drains the capture queue in batches into contacts, visits and events.

One batch is one transaction of set-based SQL: identities resolved in memory against one
lookup, new rows inserted in bulk (COPY on PostgreSQL; there new contacts go in with their
whole profile), the other profiles folded by one UPDATE (see capture.profiles). While a
batch is stored, the next is taken and parsed on a helper thread; on PostgreSQL a batch is
stored in parts, by visitor, on parallel lanes (see capture.lanes). Queue entries are acked
only after the commit, and messageIds already stored are skipped, so a redelivered or
replayed batch changes nothing.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
import psycopg
from sqlalchemy import bindparam, select, text, tuple_, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from capture.copy_text import copy_line, copy_lines, default_values, text_value, time_value
from capture.event_store import StoredEvent, insert_events, publish_stored
from capture.lanes import StoreLanes
from capture.merge import fold
from capture.models import (
    BotHit,
    Company,
    ConsentRecord,
    Contact,
    Event,
    FormSubmission,
    Identity,
)
from capture.parsing import Message, ParsedBatch, parse_batch
from capture.profiles import collect_deltas, fold_deltas, update_profiles, whole_profile
from capture.queue import CaptureQueue, get_queue
from capture.resolution import IdentityKey, KnownContact, Resolution, Resolver
from capture.visits import assign_visits, plan_visits, write_visits
from core.clock import clock
from core.db import (
    bulk_insert,
    dialect_insert,
    get_engine,
    get_sessionmaker,
    insert_new,
    is_postgres,
)
from core.ids import random_ids
from core.models import table_of
from core.settings import get_settings

log = logging.getLogger(__name__)

ENTRIES_PER_TAKE = 1000
# About 5,000 typical events: large enough to amortise each set-based statement, small
# enough to keep a batch's memory and transaction short.
BATCH_BYTES = 5_000_000
# Long lists of values go to PostgreSQL as one JSON parameter joined to the table: psycopg
# adapts a Python list element by element in Python, which costs more than the lookup itself,
# and the join makes one index probe per value.


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    bots: int = 0
    new_contacts: int = 0
    merges: int = 0


def drain_queue(queue: CaptureQueue | None = None, consumer: str | None = None) -> int:
    """Processes everything queued right now; returns how many events were stored."""
    queue = queue or get_queue()
    consumer = consumer or default_consumer_name()
    with seldom_collected(), store_lanes(queue) as lanes:
        for entries, batch in prepared_batches(queue, consumer, 0):
            hand_to_lanes(lanes, entries, batch)
        return sum(result.stored for result in lanes.finish())


def store_lanes(queue: CaptureQueue) -> StoreLanes[ParsedBatch, BatchResult]:
    """Parallel lanes on PostgreSQL (see capture.lanes); SQLite takes one writer at a time."""
    postgres = get_engine().dialect.name == "postgresql"
    return StoreLanes(get_settings().ingest_lanes if postgres else 1, store_part, queue.ack)


def hand_to_lanes(
    lanes: StoreLanes[ParsedBatch, BatchResult],
    entries: list[tuple[str, bytes]],
    batch: ParsedBatch,
) -> None:
    lanes.store([entry_id for entry_id, _ in entries], batch.split(lanes.count))


# A batch allocates some hundred thousand dicts and lists that reference counting frees. At
# the default thresholds the cycle collector walks them, and every older object, many times
# per batch: a fifth of ingest's CPU. Cycles are rare here, so it runs seldom instead.
INGEST_GC_THRESHOLDS = (100_000, 20, 10)


@contextmanager
def seldom_collected() -> Iterator[None]:
    previous = gc.get_threshold()
    gc.set_threshold(*INGEST_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def prepared_batches(
    queue: CaptureQueue,
    consumer: str,
    block_ms: int,
    keep_going: Callable[[], bool] = lambda: True,
) -> Iterator[tuple[list[tuple[str, bytes]], ParsedBatch]]:
    """Taken and parsed batches until a take comes back empty or `keep_going()` turns false.
    The next batch is taken and parsed on a helper thread while the caller stores this one:
    parsing is Python work and storing mostly waits for PostgreSQL, so the two overlap. A
    batch taken ahead is always handed out before stopping, so none waits for a reclaim."""
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-prepare") as pool:
        upcoming: Future[tuple[list[tuple[str, bytes]], ParsedBatch]] | None = pool.submit(
            prepare_batch, queue, consumer, block_ms
        )
        while upcoming is not None:
            entries, batch = upcoming.result()
            if not entries:
                return
            upcoming = (
                pool.submit(prepare_batch, queue, consumer, block_ms) if keep_going() else None
            )
            yield entries, batch


def prepare_batch(
    queue: CaptureQueue, consumer: str, block_ms: int
) -> tuple[list[tuple[str, bytes]], ParsedBatch]:
    entries = take_batch(queue, consumer, block_ms)
    return entries, parse_batch(decode_entries(entries))


def take_batch(queue: CaptureQueue, consumer: str, block_ms: int) -> list[tuple[str, bytes]]:
    """Entries hold one request each (one event or a whole batch); take them until the
    batch is worth a transaction."""
    entries = queue.take(consumer, ENTRIES_PER_TAKE, block_ms)
    size = sum(len(payload) for _, payload in entries)
    while entries and size < BATCH_BYTES:
        more = queue.take(consumer, ENTRIES_PER_TAKE, 0)
        if not more:
            break
        entries.extend(more)
        size += sum(len(payload) for _, payload in more)
    return entries


def run_forever(block_ms: int = 1000) -> None:
    """The ingest loop of `nurture worker`: block for entries, process, ack; until SIGTERM."""
    running = True

    def stop(_signum: int, _frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    queue = get_queue()
    consumer = default_consumer_name()
    log.info("ingest consumer %s started", consumer)
    gc.set_threshold(*INGEST_GC_THRESHOLDS)
    while running:
        try:
            with store_lanes(queue) as lanes:
                for entries, batch in prepared_batches(queue, consumer, block_ms, lambda: running):
                    hand_to_lanes(lanes, entries, batch)
                lanes.finish()
        except Exception:
            # The entries stay pending and are reclaimed; a broken batch must not stop ingest.
            log.exception("ingest batch failed; it will be retried")
            time.sleep(1)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def decode_entries(entries: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    envelopes: list[dict[str, Any]] = []
    for _entry_id, payload in entries:
        envelopes.extend(orjson.loads(payload))
    return envelopes


DEADLOCK_RETRIES = 3


def store_part(batch: ParsedBatch) -> BatchResult:
    """Stores a parsed batch (or a lane's part of one) in one transaction. Concurrent
    transactions touching the same contacts can deadlock; PostgreSQL then undoes one, which
    is tried again from the start."""
    attempt = 1
    while True:
        try:
            with get_sessionmaker()() as session:
                result = store(session, batch)
                session.commit()
            return result
        except (OperationalError, psycopg.errors.DeadlockDetected) as error:
            # COPY goes through psycopg directly, so its errors come unwrapped.
            cause = error.orig if isinstance(error, OperationalError) else error
            if attempt == DEADLOCK_RETRIES or not isinstance(
                cause, psycopg.errors.DeadlockDetected
            ):
                raise
            log.info("ingest batch deadlocked with another; trying it again (%d)", attempt)
            attempt += 1
            for message in batch.messages:
                message.unresolve()


def ingest(session: Session, envelopes: list[dict[str, Any]]) -> BatchResult:
    """Stores one batch of envelopes; flushes, the caller commits."""
    return store(session, parse_batch(envelopes))


def store(session: Session, batch: ParsedBatch) -> BatchResult:
    """Stores one parsed batch; flushes, the caller commits."""
    result = BatchResult()
    messages, bot_hits = batch.messages, batch.bot_hits
    result.bots = sum(bot_hits.values())
    record_bot_hits(session, bot_hits)

    fresh = skip_already_stored(session, messages)
    result.duplicates = len(messages) - len(fresh)
    if not fresh:
        session.flush()
        return result
    fresh.sort(key=lambda m: m.timestamp)
    if is_postgres(session):
        try:
            with session.begin_nested():
                return store_with_whole_new_contacts(session, fresh, result)
        except RaceLost:
            log.info("ingest batch raced another worker; storing it step by step")
            for message in fresh:
                message.unresolve()
    return store_in_steps(session, fresh, result)


class RaceLost(Exception):
    """Another worker claimed one of the batch's new keys or stored one of its messages
    between our lookups and our writes."""


def store_with_whole_new_contacts(
    session: Session, fresh: list[Message], result: BatchResult
) -> BatchResult:
    """Stores new, unique messages in timestamp order (PostgreSQL). Contacts new in the batch
    are inserted with their whole profile, sparing each a second write (and index entries) by
    the profile update; only those taking part in a merge are inserted first, bare, for the
    merge. Raises RaceLost when another worker got in the way: store_in_steps copes with it."""
    ids = random_ids()
    resolver = resolve_identities(session, fresh, ids)
    plan = resolver.result
    now = clock.now()
    merging = set(plan.merges) | {resolver.final_contact(w) for w in plan.merges.values()}
    whole = (plan.new_contacts - merging) & {m.contact_id for m in fresh}
    insert_bare_contacts(session, fresh, resolver, plan.new_contacts - whole, now)
    fold_merges(session, fresh, resolver)
    visits = plan_visits(session, fresh, ids)
    deltas = collect_deltas(fresh)
    insert_contacts(
        session,
        [
            {"id": id_, **whole_profile(deltas[id_], resolver.contacts[id_].is_known)}
            for id_ in whole
        ],
        now,
    )
    new_keys = {key: resolver.final_contact(owner) for key, owner in plan.new_keys.items()}
    if new_keys and insert_keys(session, new_keys, now):
        raise RaceLost
    write_visits(session, visits, fresh)
    stored = insert_events(session, fresh)
    if len(stored) != len(fresh):
        raise RaceLost
    fold_deltas(session, deltas, plan.became_known, whole)
    return finish_batch(session, fresh, stored, plan, result)


def store_in_steps(session: Session, fresh: list[Message], result: BatchResult) -> BatchResult:
    """Stores new, unique messages in timestamp order, coping with other workers' writes:
    a new key one claimed folds our new contact into its owner, a message one stored is
    skipped."""
    ids = random_ids()
    resolver = resolve_identities(session, fresh, ids)
    plan = resolver.result
    write_identities(session, fresh, resolver)
    fold_merges(session, fresh, resolver)
    assign_visits(session, fresh, ids)
    stored = insert_events(session, fresh)
    if len(stored) == len(fresh):
        kept = fresh
    else:
        stored_ids = {(row.source_id, row.message_id) for row in stored}
        kept = [m for m in fresh if (m.source_id, m.message_id) in stored_ids]
    update_profiles(session, kept, plan.became_known)
    return finish_batch(session, kept, stored, plan, result)


def fold_merges(session: Session, messages: list[Message], resolver: Resolver) -> None:
    """Folds the batch's merged contacts into their survivors, and points the batch's messages
    at the survivors."""
    plan = resolver.result
    if plan.merges:
        involved = set(plan.merges) | {resolver.final_contact(w) for w in plan.merges.values()}
        contacts = {
            c.id: c for c in session.scalars(select(Contact).where(Contact.id.in_(involved)))
        }
        fold(session, {loser: resolver.final_contact(loser) for loser in plan.merges}, contacts)
    for message in messages:
        message.contact_id = resolver.final_contact(message.contact_id)


def finish_batch(
    session: Session,
    kept: list[Message],
    stored: list[StoredEvent],
    plan: Resolution,
    result: BatchResult,
) -> BatchResult:
    record_groups(session, kept)
    record_consents_and_forms(session, kept)
    publish_stored(session, stored)
    session.flush()
    result.stored = len(stored)
    result.new_contacts = len(plan.new_contacts)
    result.merges = len(plan.merges)
    return result


def record_bot_hits(session: Session, hits: Counter[tuple[uuid.UUID, date, str]]) -> None:
    if not hits:
        return
    table = table_of(BotHit)
    stmt = dialect_insert(session, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["source_id", "day", "bot"],
        set_={"hits": table.c.hits + stmt.excluded.hits},
    )
    session.execute(
        stmt,
        [{"source_id": s, "day": d, "bot": b, "hits": n} for (s, d, b), n in hits.items()],
    )


def skip_already_stored(session: Session, messages: list[Message]) -> list[Message]:
    """Drops messages whose (source, messageId) is stored already or repeats in this batch."""
    seen: set[tuple[uuid.UUID, str]] = set()
    unique: list[Message] = []
    for message in messages:
        key = (message.source_id, message.message_id)
        if key not in seen:
            seen.add(key)
            unique.append(message)
    message_ids = list({message_id for _, message_id in seen})
    stored: set[tuple[uuid.UUID, str]] = set()
    if is_postgres(session):
        rows: Iterable[Any] = session.execute(
            STORED_MESSAGES, {"values": orjson.dumps(message_ids).decode()}
        )
        stored.update((row.source_id, row.message_id) for row in rows)
    else:
        for chunk in _chunks(message_ids, 500):
            rows = session.execute(
                select(Event.source_id, Event.message_id).where(Event.message_id.in_(chunk))
            )
            stored.update((row.source_id, row.message_id) for row in rows)
    return [m for m in unique if (m.source_id, m.message_id) not in stored]


# The batch's message ids already stored. `= ANY(array)` makes it one index probe per id: joined
# to the JSON elements instead, the planner (expecting 100 of them) scans the whole table.
STORED_MESSAGES = text(
    "SELECT source_id, message_id FROM events"
    " WHERE message_id = ANY(ARRAY(SELECT json_array_elements_text(CAST(:values AS json))))"
)


# The batch's keys, each with its owner, whether that owner is known, and the owner's user ids
# (a row per user id): one index probe per key, one statement.
KNOWN_KEYS = text(
    "SELECT k.kind, k.value, i.contact_id, c.is_known, u.value AS user_id"
    " FROM json_to_recordset(CAST(:keys AS json)) AS k(kind text, value text)"
    " JOIN identities i ON i.kind = k.kind AND i.value = k.value"
    " JOIN contacts c ON c.id = i.contact_id"
    " LEFT JOIN identities u ON u.contact_id = c.id AND u.kind = 'user_id'"
)


def known_keys(
    session: Session, keys: set[IdentityKey]
) -> tuple[dict[IdentityKey, uuid.UUID], dict[uuid.UUID, KnownContact]]:
    """The contact behind each key already known, and those contacts."""
    key_owner: dict[IdentityKey, uuid.UUID] = {}
    contacts: dict[uuid.UUID, KnownContact] = {}
    if is_postgres(session):
        document = orjson.dumps([{"kind": kind, "value": value} for kind, value in keys])
        for kind, value, contact_id, is_known, user_id in session.execute(
            KNOWN_KEYS, {"keys": document.decode()}
        ):
            key_owner[(kind, value)] = contact_id
            contact = contacts.get(contact_id)
            if contact is None:
                contact = contacts[contact_id] = KnownContact(contact_id, is_known)
            if user_id is not None:
                contact.user_ids.add(user_id)
        return key_owner, contacts
    values_by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, value in keys:
        values_by_kind[kind].append(value)
    for kind, values in values_by_kind.items():
        for chunk in _chunks(values, 500):
            rows = session.execute(
                select(Identity.value, Identity.contact_id).where(
                    Identity.kind == kind, Identity.value.in_(chunk)
                )
            )
            key_owner.update(((kind, row.value), row.contact_id) for row in rows)
    owner_ids = list(set(key_owner.values()))
    for chunk in _chunks(owner_ids, 500):
        for contact_id, is_known in session.execute(
            select(Contact.id, Contact.is_known).where(Contact.id.in_(chunk))
        ):
            contacts[contact_id] = KnownContact(contact_id, is_known)
        for owner_id, user_id in session.execute(
            select(Identity.contact_id, Identity.value).where(
                Identity.contact_id.in_(chunk), Identity.kind == "user_id"
            )
        ):
            contacts[owner_id].user_ids.add(user_id)
    return key_owner, contacts


def resolve_identities(
    session: Session, messages: list[Message], ids: Iterator[uuid.UUID]
) -> Resolver:
    key_owner, contacts = known_keys(session, {key for message in messages for key in message.keys})
    resolver = Resolver(key_owner, contacts, ids)
    for message in messages:
        message.contact_id = resolver.resolve(message.keys)
    return resolver


def write_identities(session: Session, messages: list[Message], resolver: Resolver) -> None:
    """Inserts new contacts and identities. On PostgreSQL a concurrent worker may have claimed
    one of our new keys first; then our new contact folds into the owner it lost to."""
    plan = resolver.result
    now = clock.now()
    insert_bare_contacts(session, messages, resolver, plan.new_contacts, now)
    if not plan.new_keys:
        return
    lost = insert_keys(session, plan.new_keys, now)
    for chunk in _chunks(lost, 1000):
        for row in session.execute(
            select(Identity.kind, Identity.value, Identity.contact_id).where(
                tuple_(Identity.kind, Identity.value).in_(chunk)
            )
        ):
            ours = plan.new_keys[(row.kind, row.value)]
            if ours in plan.new_contacts and ours != row.contact_id:
                plan.merges[ours] = row.contact_id
                resolver.contacts.setdefault(row.contact_id, KnownContact(row.contact_id, True))


def insert_bare_contacts(
    session: Session,
    messages: list[Message],
    resolver: Resolver,
    contact_ids: Iterable[uuid.UUID],
    now: datetime,
) -> None:
    """Inserts new contacts with no profile but whether they are known and when they were
    first seen (by the messages resolved to them); the profile update fills in the rest."""
    first_seen: dict[uuid.UUID, datetime] = {}
    for message in messages:
        first_seen.setdefault(message.contact_id, message.timestamp)
    insert_contacts(
        session,
        [
            {
                "id": id_,
                "is_known": resolver.contacts[id_].is_known,
                "first_seen_at": first_seen.get(id_, now),
                "last_seen_at": first_seen.get(id_, now),
            }
            for id_ in contact_ids
        ],
        now,
    )


def insert_contacts(session: Session, rows: list[dict[str, Any]], now: datetime) -> None:
    """Inserts new contacts given as rows of the same columns, created now; the columns not
    given take their defaults. On PostgreSQL they are COPYed as text (see capture.copy_text)."""
    if not rows:
        return
    if not is_postgres(session):
        bulk_insert(
            session,
            table_of(Contact),
            [row | {"created_at": now, "updated_at": now} for row in rows],
        )
        return
    columns = (*rows[0], "created_at", "updated_at")
    defaults = default_values(table_of(Contact), columns)
    stamp = time_value(now)
    tail = "\t".join((stamp, stamp, *defaults.values()))
    copy_lines(
        session,
        "contacts",
        (*columns, *defaults),
        [f"{copy_line(row.values())}\t{tail}" for row in rows],
    )


def insert_keys(
    session: Session, new_keys: dict[IdentityKey, uuid.UUID], now: datetime
) -> list[IdentityKey]:
    """Inserts the new identity keys; returns those a concurrent worker claimed first. On
    PostgreSQL they are COPYed straight in, and only a COPY that hits a claimed key (undone,
    a savepoint) goes the careful way: INSERT … ON CONFLICT DO NOTHING."""
    if is_postgres(session):
        stamp = time_value(now)
        try:
            with session.begin_nested():
                copy_lines(
                    session,
                    "identities",
                    ("kind", "value", "contact_id", "created_at"),
                    [
                        f"{text_value(kind)}\t{text_value(value)}\t{contact_id.hex}\t{stamp}"
                        for (kind, value), contact_id in new_keys.items()
                    ],
                )
            return []
        except psycopg.errors.UniqueViolation:
            pass
    went_in = insert_new(
        session,
        table_of(Identity),
        [
            {"kind": kind, "value": value, "contact_id": contact_id, "created_at": now}
            for (kind, value), contact_id in new_keys.items()
        ],
        conflict_columns=("kind", "value"),
        returning=("kind", "value"),
        owner_column="contact_id",
    )
    inserted = {(row.kind, row.value) for row in went_in}
    return [key for key in new_keys if key not in inserted]


def record_groups(session: Session, messages: list[Message]) -> None:
    """`group` calls upsert the company and point the contact at it."""
    groups = [m for m in messages if m.type == "group" and m.envelope.get("groupId")]
    if not groups:
        return
    now = clock.now()
    latest: dict[str, Message] = {m.envelope["groupId"]: m for m in groups}
    stmt = dialect_insert(session, table_of(Company))
    stmt = stmt.on_conflict_do_update(
        index_elements=["group_id"],
        set_={"traits": stmt.excluded.traits, "name": stmt.excluded.name, "updated_at": now},
    )
    session.execute(
        stmt,
        [
            {
                "id": uuid.uuid4(),
                "group_id": group_id,
                "name": str(m.traits.get("name"))[:300] if m.traits.get("name") else None,
                "traits": m.traits,
                "created_at": now,
                "updated_at": now,
            }
            for group_id, m in latest.items()
        ],
    )
    company_ids = dict(
        session.execute(
            select(Company.group_id, Company.id).where(Company.group_id.in_(list(latest)))
        ).all()
    )
    session.execute(
        update(table_of(Contact))
        .where(table_of(Contact).c.id == bindparam("b_id"))
        .values(company_id=bindparam("company_id")),
        [
            {"b_id": m.contact_id, "company_id": company_ids[m.envelope["groupId"]]}
            for m in {m.contact_id: m for m in groups}.values()
        ],
    )


def record_consents_and_forms(session: Session, messages: list[Message]) -> None:
    """Form submissions arrive as identify envelopes carrying consent decisions and the
    submission id; the consent proof keeps the full IP (it is the legal record)."""
    consent_rows: list[dict[str, Any]] = []
    submissions: list[dict[str, Any]] = []
    for m in messages:
        for consent in m.envelope.get("consents") or []:
            consent_rows.append(
                {
                    "contact_id": m.contact_id,
                    "channel": consent["channel"],
                    "granted": bool(consent["granted"]),
                    "text": consent["text"],
                    "source_id": m.source_id,
                    "form_id": uuid.UUID(consent["formId"]) if consent.get("formId") else None,
                    "ip": m.raw_ip,
                    "page_url": consent.get("pageUrl"),
                    "recorded_at": m.timestamp,
                }
            )
        if m.envelope.get("formSubmissionId") is not None:
            submissions.append(
                {"b_id": int(m.envelope["formSubmissionId"]), "contact_id": m.contact_id}
            )
    if consent_rows:
        bulk_insert(session, table_of(ConsentRecord), consent_rows)
        latest: dict[tuple[uuid.UUID, str], bool] = {}
        for row in sorted(consent_rows, key=lambda r: r["recorded_at"]):
            latest[(row["contact_id"], row["channel"])] = row["granted"]
        for channel in ("email", "sms"):
            decided = [
                {"b_id": cid, "value": "granted" if granted else "denied"}
                for (cid, ch), granted in latest.items()
                if ch == channel
            ]
            if decided:
                column = table_of(Contact).c[f"{channel}_consent"]
                session.execute(
                    update(table_of(Contact))
                    .where(table_of(Contact).c.id == bindparam("b_id"))
                    .values({column.name: bindparam("value")}),
                    decided,
                )
    if submissions:
        session.execute(
            update(table_of(FormSubmission))
            .where(table_of(FormSubmission).c.id == bindparam("b_id"))
            .values(contact_id=bindparam("contact_id")),
            submissions,
        )
        promoted = {s["contact_id"] for s in submissions}
        session.execute(
            update(Contact)
            .where(
                Contact.id.in_(promoted),
                (Contact.lifecycle_stage.is_(None)) | (Contact.lifecycle_stage == "subscriber"),
            )
            .values(lifecycle_stage="lead")
        )


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
