"""Ingest's parallel storing lanes: parts stored side by side, entries acked only once every
part of their batch has committed, a visitor kept on one lane, and the races and deadlocks
two lanes can meet on PostgreSQL."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from api.app import create_app
from capture import ingest
from capture.ingest import decode_entries, store_part
from capture.lanes import StoreLanes
from capture.models import Event, Identity
from capture.parsing import GIVE_WAY_EVERY, ParsedBatch, parse_batch
from capture.queue import get_queue
from capture.sources import create_source
from capture.tracking import envelope_for_single
from core.db import session_scope
from core.settings import get_settings
from tests.capture.test_ingest import CHROME, T0, contacts, events_of, page, send
from tests.conftest import drain

SITE = "https://www.example.com/"


def test_two_lanes_store_their_parts_at_the_same_time():
    both_started = threading.Barrier(2, timeout=5)
    threads: set[str] = set()

    def store_part(part: str) -> str:
        threads.add(threading.current_thread().name)
        both_started.wait()  # breaks (and fails the test) if the parts ran one after the other
        return part

    acked: list[list[str]] = []
    with StoreLanes(2, store_part, acked.append) as lanes:
        lanes.store(["1-0"], ["a", "b"])
        assert sorted(lanes.finish()) == ["a", "b"]
    assert acked == [["1-0"]]
    assert len(threads) == 2 and threading.current_thread().name not in threads


def test_a_batch_is_acked_only_when_every_part_committed_and_a_failure_reaches_the_caller():
    release = threading.Event()
    acked: list[list[str]] = []

    def store_part(part: str) -> str:
        if part == "slow":
            assert release.wait(5)
        if part == "broken":
            raise RuntimeError("the database went away")
        return part

    with StoreLanes(2, store_part, acked.append) as lanes:
        lanes.store(["1-0", "1-1"], ["fast", "slow"])
        time.sleep(0.1)
        assert acked == []  # one part is still being stored
        release.set()
        lanes.store(["2-0"], ["fine", "broken"])
        with pytest.raises(RuntimeError, match="went away"):
            lanes.finish()
    assert acked == [["1-0", "1-1"]]  # the batch with a broken part stays pending


def test_one_lane_stores_on_the_calling_thread_and_acks_after():
    order: list[str] = []
    caller = threading.current_thread().name

    def store_part(part: str) -> str:
        assert threading.current_thread().name == caller
        order.append(part)
        return part

    with StoreLanes(1, store_part, lambda ids: order.append(f"ack {ids}")) as lanes:
        lanes.store(["1-0"], ["a"])
        assert lanes.finish() == ["a"]
    assert order == ["a", "ack ['1-0']"]


def test_a_visitors_messages_stay_on_one_lane_in_order():
    envelopes = []
    for step in range(3):
        for visitor in range(20):
            at = (T0 + timedelta(minutes=step)).isoformat()
            envelopes.append(_envelope(page(f"visitor-{visitor}", SITE, T0) | {"timestamp": at}))
    envelopes.append(_envelope({"type": "track", "userId": "server-only", "event": "Paid"}))
    batch = parse_batch(envelopes)
    batch.bot_hits[(uuid.uuid4(), date(2026, 3, 2), "Googlebot")] = 2
    parts = batch.split(2)
    assert sorted(m.message_id for part in parts for m in part.messages) == sorted(
        m.message_id for m in batch.messages
    )
    for part in parts:
        visitors = {m.anonymous_id or m.user_id for m in part.messages}
        assert all(
            (m.anonymous_id or m.user_id) not in visitors
            for other in parts
            if other is not part
            for m in other.messages
        )
        for visitor in visitors:
            times = [m.timestamp for m in part.messages if m.anonymous_id == visitor]
            assert times == sorted(times)
    assert all(part.messages for part in parts)  # 21 visitors never all hash to one lane
    assert parts[0].bot_hits == batch.bot_hits and parts[1].bot_hits == Counter()
    assert batch.split(1) == [batch]


def test_one_person_on_two_lanes_at_once_ends_as_one_contact_with_all_history(pg_backend):
    # The laptop's and the phone's anonymous ids take different lanes, and both identify with
    # the same email in one drain: each lane finds the email new, one claims it first, and the
    # other's contact folds into it.
    assert get_settings().ingest_lanes == 2
    laptop, phone = _visitors_on_different_lanes()
    with session_scope() as session:
        _, write_key = create_source(session, "lanes site", [SITE])
    identify = {"type": "identify", "traits": {"email": "wang@corp.cn"}}
    with TestClient(create_app()) as client:
        send(
            client,
            write_key,
            page(laptop, SITE, T0),
            identify
            | {"anonymousId": laptop, "timestamp": (T0 + timedelta(seconds=5)).isoformat()},
            page(phone, SITE + "pricing", T0 + timedelta(minutes=1)),
            identify | {"anonymousId": phone, "timestamp": (T0 + timedelta(minutes=2)).isoformat()},
        )
        assert drain() == 4
    [person] = contacts()
    assert len(events_of(person.id)) == 4
    assert person.email == "wang@corp.cn" and person.page_views == 2
    with session_scope() as session:
        keys = {tuple(row) for row in session.execute(select(Identity.kind, Identity.value))}
        assert set(session.scalars(select(Event.contact_id))) <= {person.id} | _merged(session)
    assert keys == {("anonymous", laptop), ("anonymous", phone), ("email", "wang@corp.cn")}
    assert get_queue().take("after", 10, 0) == []


def test_many_visitors_drained_on_two_lanes_are_all_stored_once(pg_backend):
    with session_scope() as session:
        _, write_key = create_source(session, "lanes site", [SITE])
    with TestClient(create_app()) as client:
        for step in range(3):
            at = T0 + timedelta(minutes=step)
            send(client, write_key, *(page(f"v-{n}", SITE, at) for n in range(100)))
        assert drain() == 300
        assert drain() == 0
    people = contacts()
    assert len(people) == 100
    assert sorted(person.page_views for person in people) == [3] * 100


@pytest.mark.parametrize("through", ["sqlalchemy", "psycopg"])
def test_a_part_that_deadlocks_is_stored_again_from_the_start(pg_backend, monkeypatch, through):
    # A real deadlock: the part holds contact A and waits for B, which another transaction
    # holds while it waits for A. PostgreSQL undoes the part (it waited first); it goes again.
    # COPY talks to psycopg directly, so its error comes unwrapped: both kinds are retried.
    with session_scope() as session:
        _, write_key = create_source(session, "lanes site", [SITE])
    with TestClient(create_app()) as client:
        send(client, write_key, page("a", SITE, T0), page("b", SITE, T0))
        assert drain() == 2
        send(client, write_key, page("a", SITE + "demo", T0 + timedelta(hours=1)))
    ids = {c.anonymous_id: c.contact_id for c in _anonymous_owners()}
    entries = get_queue().take("lane", 10, 0)
    batch = parse_batch(decode_entries(entries))
    stored = ingest.store
    attempts: list[int] = []

    def store_after_a_deadlock(session: Any, part: ParsedBatch) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            _deadlock(session, ids["a"], ids["b"], pg_backend.database_url, through)
        return stored(session, part)

    monkeypatch.setattr(ingest, "store", store_after_a_deadlock)
    assert store_part(batch).stored == 1
    assert len(attempts) == 2
    assert [e.url for e in events_of(ids["a"])] == [SITE, SITE + "demo"]
    assert {c.page_views for c in contacts()} == {2, 1}


def _deadlock(session: Any, first: uuid.UUID, second: uuid.UUID, url: str, through: str) -> None:
    other = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))
    other.execute("SELECT id FROM contacts WHERE id = %s FOR UPDATE", (second,))
    session.execute(text("SELECT id FROM contacts WHERE id = :id FOR UPDATE"), {"id": first})
    pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()

    def other_takes_first_once_we_wait() -> None:
        waiting = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
        while not waiting.execute(
            "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)
        ).fetchone():
            time.sleep(0.02)
        waiting.close()
        other.execute("SELECT id FROM contacts WHERE id = %s FOR UPDATE", (first,))
        other.rollback()
        other.close()

    helper = threading.Thread(target=other_takes_first_once_we_wait)
    helper.start()
    try:
        if through == "psycopg":
            driver = session.connection().connection.driver_connection
            driver.execute("SELECT id FROM contacts WHERE id = %s FOR UPDATE", (second,))
        else:
            session.execute(
                text("SELECT id FROM contacts WHERE id = :id FOR UPDATE"), {"id": second}
            )
    finally:
        helper.join(10)


def _anonymous_owners() -> list[Any]:
    with session_scope() as session:
        return list(
            session.execute(
                select(Identity.value.label("anonymous_id"), Identity.contact_id).where(
                    Identity.kind == "anonymous"
                )
            )
        )


def _merged(session: Any) -> set[uuid.UUID]:
    return set(session.scalars(text("SELECT id FROM contacts WHERE merged_into_id IS NOT NULL")))


def _visitors_on_different_lanes() -> tuple[str, str]:
    names = [f"device-{n}" for n in range(20)]
    laptop = names[0]
    phone = next(name for name in names if hash(name) % 2 != hash(laptop) % 2)
    return laptop, phone


def _envelope(message: dict[str, Any]) -> dict[str, Any]:
    """A queued envelope as capture writes it, for a parse without the API."""
    meta = {"sourceId": str(uuid.UUID(int=1)), "ip": "203.0.113.9", "userAgent": CHROME}
    body = {"messageId": str(uuid.uuid4()), **message}
    return envelope_for_single(body, body["type"], T0, meta, timedelta(minutes=5))


def test_parsing_gives_the_gil_to_a_thread_waiting_on_io_every_few_dozen_messages():
    # With a switch interval far longer than the parse, only the parser's own pauses let the
    # other thread (a lane coming back from PostgreSQL, here from a short sleep) run.
    envelopes = [
        _envelope(page(f"visitor-{visitor}", SITE, T0) | {"messageId": f"m-{visitor}"})
        for visitor in range(40 * GIVE_WAY_EVERY)
    ]
    parsing = threading.Event()
    wakeups = 0

    def lane() -> None:
        nonlocal wakeups
        parsing.wait()
        while parsing.is_set():
            time.sleep(0.0001)
            wakeups += 1

    other = threading.Thread(target=lane)
    other.start()
    previous = sys.getswitchinterval()
    sys.setswitchinterval(30)
    try:
        parsing.set()
        time.sleep(0.01)  # the other thread is in its loop
        before = wakeups
        parse_batch(envelopes)
        during = wakeups - before
        parsing.clear()
    finally:
        sys.setswitchinterval(previous)
        other.join()
    assert during >= 10
