"""The change feed under concurrency: dispatchers racing for one consumer, a publisher whose
transaction commits after a later one, a consumer that keeps failing, and the dispatch that a
commit (and only a commit) asks for."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest
import redis
from sqlalchemy.orm import Session

from core import feed
from core.db import get_sessionmaker, session_scope
from tests.conftest import Backend


class Recorder:
    """A consumer that notes every change it is handed, slowly enough for dispatchers to race."""

    def __init__(self, pause: float = 0.0) -> None:
        self.seen: list[int] = []
        self.pause = pause
        self.lock = threading.Lock()

    def __call__(self, _session: Session, records: Sequence[feed.ChangeRecord]) -> None:
        time.sleep(self.pause)
        with self.lock:
            self.seen.extend(r.id for r in records)


@pytest.fixture
def only(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, feed.Handler]]:
    """The feed's subscribers for this test alone (other packages' consumers stay out)."""
    subscribers: dict[str, feed.Handler] = {}
    monkeypatch.setattr(feed, "_subscribers", subscribers)
    monkeypatch.setattr(feed, "_after", {})
    yield subscribers
    feed.on_commit_dispatch(None)


def publish(count: int) -> list[int]:
    with session_scope() as session:
        feed.publish(
            session, [feed.Change(feed.TRAITS_CHANGED, uuid.uuid4()) for _ in range(count)]
        )
    with session_scope() as session:
        return [r.id for r in feed.read_since(session, 0, 100_000)]


def test_concurrent_dispatchers_hand_each_change_to_a_consumer_once(
    backend: Backend, only: dict[str, feed.Handler]
) -> None:
    recorder = Recorder(pause=0.02)
    only["recorder"] = recorder
    stop = threading.Event()
    failures: list[BaseException] = []

    def dispatcher() -> None:
        try:
            while not stop.is_set():
                feed.dispatch_each(limit=7)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(15):
        publish(5)
    deadline = time.monotonic() + 30
    while len(recorder.seen) < 75 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures
    published = publish(0)
    assert len(published) == 75
    assert sorted(recorder.seen) == published  # every change once: none twice, none skipped


def test_a_change_committed_after_a_later_one_is_not_skipped(
    pg_backend: Backend, only: dict[str, feed.Handler]
) -> None:
    recorder = Recorder()
    only["recorder"] = recorder
    slow = get_sessionmaker()()
    try:
        feed.publish(slow, [feed.Change(feed.TRAITS_CHANGED, uuid.uuid4())])  # the lower id
        later = publish(1)
        assert feed.dispatch_each() == 1 and recorder.seen == later
        slow.commit()
    finally:
        slow.close()
    assert feed.dispatch_each() == 1
    assert sorted(recorder.seen) == publish(0)  # the earlier id, handed after the later one


def test_a_failing_consumer_does_not_hold_up_the_others(
    backend: Backend, only: dict[str, feed.Handler]
) -> None:
    healthy, recovered = Recorder(), Recorder()
    broken = {"on": True}

    def flaky(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
        feed.publish(session, [feed.Change(feed.TRAITS_CHANGED, uuid.uuid4())])
        if broken["on"]:
            raise RuntimeError("consumer bug")
        recovered(session, records)

    only["flaky"] = flaky
    only["healthy"] = healthy
    ids = publish(3)
    assert feed.dispatch_each() == 3
    assert healthy.seen == ids and recovered.seen == []
    assert publish(0) == ids  # what the failing consumer published was rolled back with it
    broken["on"] = False
    feed.dispatch_each()
    assert recovered.seen[:3] == ids  # retried from where it stood


def test_only_a_commit_that_published_asks_for_a_dispatch(
    backend: Backend, only: dict[str, feed.Handler]
) -> None:
    requests: list[int] = []
    feed.on_commit_dispatch(lambda: requests.append(1))
    with session_scope() as session:
        for _ in range(3):  # a burst in one transaction asks once
            feed.publish(session, [feed.Change(feed.TRAITS_CHANGED, uuid.uuid4())])
        assert requests == []  # not before the commit
    assert requests == [1]
    with pytest.raises(RuntimeError), session_scope() as session:
        feed.publish(session, [feed.Change(feed.TRAITS_CHANGED, uuid.uuid4())])
        raise RuntimeError("rolled back")
    with session_scope() as session:
        feed.publish(session, [])
    assert requests == [1]
    assert len(publish(0)) == 3


def test_a_requested_dispatch_runs_once_for_a_burst(
    pg_backend: Backend, only: dict[str, feed.Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import tasks
    from worker.app import celery_app

    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    recorder = Recorder()
    only["recorder"] = recorder
    feed.on_commit_dispatch(tasks.request_dispatch)
    client = redis.Redis.from_url(str(pg_backend.redis_url))
    client.set(tasks.dispatch_request_key(), 1)  # a dispatch is already waiting to start
    publish(2)
    assert recorder.seen == []  # the waiting dispatch will read these; no second one is queued
    tasks.dispatch_feed.apply()
    assert len(recorder.seen) == 2 and not client.exists(tasks.dispatch_request_key())
    ids = publish(1)
    assert sorted(recorder.seen) == ids  # nothing waiting: this commit's dispatch ran at once


def test_a_consumer_after_another_sees_only_what_that_one_has_handled(
    backend: Backend, only: dict[str, feed.Handler]
) -> None:
    first, second = Recorder(), Recorder()
    feed.subscribe("first", first)
    feed.subscribe("second", second, after=["first"])
    ids = publish(3)
    with session_scope() as session:
        assert feed.dispatch_to(session, "second") == 0  # "first" has not handled them yet
        assert feed.dispatch_to(session, "first") == 3
    with session_scope() as session:
        assert feed.dispatch_to(session, "second") == 3
    assert first.seen == second.seen == ids


def test_changes_selected_in_the_database_come_numbered_after_the_others_at_commit(
    pg_backend: Backend, only: dict[str, feed.Handler]
) -> None:
    recorder = Recorder()
    only["recorder"] = recorder
    contacts = [uuid.uuid4() for _ in range(3)]
    selected = (
        "SELECT CAST(:kind AS varchar), CAST(c AS uuid), jsonb_build_object('n', n)"
        " FROM unnest(CAST(:contacts AS text[])) WITH ORDINALITY AS s(c, n) ORDER BY n"
    )
    params = {"kind": feed.EVENT_STORED, "contacts": "{" + ",".join(map(str, contacts)) + "}"}
    with pytest.raises(RuntimeError), session_scope() as session:
        feed.publish_selected(session, selected, params)
        raise RuntimeError("rolled back")
    assert publish(0) == []
    with session_scope() as session:
        feed.publish_selected(session, selected, params)
        feed.publish(session, [feed.Change(feed.TRAITS_CHANGED, uuid.uuid4())])
        pending = feed.read_since(session, 0, 100)
        assert [r.kind for r in pending] == [feed.TRAITS_CHANGED]  # the selected wait for commit
    assert feed.dispatch_each() == 4
    with session_scope() as session:
        records = feed.read_since(session, 0, 100)
    assert [r.kind for r in records] == [feed.TRAITS_CHANGED] + [feed.EVENT_STORED] * 3
    assert [(r.contact_id, r.payload) for r in records[1:]] == [
        (contact, {"n": n}) for n, contact in enumerate(contacts, start=1)
    ]
    assert [r.position for r in records] == sorted(r.position for r in records)
    assert recorder.seen == [r.id for r in records]
