"""Ingest's storing step under races and at batch scale: a message another worker stored
meanwhile, and profiles folded over several batches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from api.app import create_app
from capture import ingest
from capture.event_store import insert_events
from capture.ingest import decode_entries
from capture.models import Contact, Identity
from capture.parsing import parse_batch
from capture.queue import get_queue
from capture.sources import create_source
from core.db import session_scope
from tests.capture.test_ingest import T0, contacts, events_of, page, send
from tests.conftest import drain


def test_a_message_another_worker_stored_meanwhile_is_skipped_not_failing_the_batch(pg_backend):
    # PostgreSQL only: SQLite writers take turns, so no other worker can store meanwhile.
    with session_scope() as session:
        _, write_key = create_source(session, "race site", ["https://www.example.com"])
    with TestClient(create_app()) as client:
        _race(client, write_key)


def _race(client: TestClient, write_key: str) -> None:
    send(client, write_key, page("racer", "https://www.example.com/", T0))
    [(entry_id, payload)] = get_queue().take("slow-worker", 10, 0)
    [message] = parse_batch(decode_entries([(entry_id, payload)])).messages
    get_queue().ack([entry_id])
    send(client, write_key, page("racer", "https://www.example.com/", T0) | {
        "messageId": message.message_id
    })  # fmt: skip
    assert drain() == 1  # the other worker stores it first
    [contact] = contacts()
    later = (message.timestamp + timedelta(minutes=1)).isoformat()
    [newer] = parse_batch(
        [message.envelope | {"messageId": "racer-2", "timestamp": later}]
    ).messages
    message.contact_id = newer.contact_id = contact.id
    with session_scope() as session:
        stored = insert_events(session, [message, newer])
    assert [event.message_id for event in stored] == ["racer-2"]
    assert [event.message_id for event in events_of(contact.id)] == [
        message.message_id,
        "racer-2",
    ]


def test_a_key_another_worker_claimed_meanwhile_folds_our_new_contact_into_its_owner(
    pg_backend, monkeypatch
):
    # PostgreSQL only, as above: the other worker stores between our lookup and our insert.
    with session_scope() as session:
        _, write_key = create_source(session, "race site", ["https://www.example.com"])
    identify = {"type": "identify", "traits": {"email": "li@corp.cn"}}
    with TestClient(create_app()) as client:
        send(client, write_key, identify | {"anonymousId": "laptop"})
        [(entry_id, payload)] = get_queue().take("slow-worker", 10, 0)
        batch = parse_batch(decode_entries([(entry_id, payload)]))
        get_queue().ack([entry_id])
        send(client, write_key, identify | {"anonymousId": "phone"})
        looked_up = ingest.known_keys

        def other_worker_stores_after_our_lookup(*args: Any) -> Any:
            found = looked_up(*args)
            monkeypatch.setattr(ingest, "known_keys", looked_up)
            assert drain() == 1
            return found

        monkeypatch.setattr(ingest, "known_keys", other_worker_stores_after_our_lookup)
        with session_scope() as session:
            assert ingest.store(session, batch).stored == 1
    [contact] = contacts()
    assert contact.email == "li@corp.cn"
    assert {event.anonymous_id for event in events_of(contact.id)} == {"laptop", "phone"}
    with session_scope() as session:
        owners = session.execute(select(Identity.value, Identity.contact_id)).all()
    assert dict(owners) == {"laptop": contact.id, "li@corp.cn": contact.id, "phone": contact.id}


def test_profiles_fold_across_batches_without_losing_counts_or_touches(client, write_key):
    anon = "returning"
    send(
        client,
        write_key,
        page(anon, "https://www.example.com/?utm_source=baidu&utm_medium=cpc", T0),
        {"type": "track", "anonymousId": anon, "event": "Viewed Pricing",
         "timestamp": (T0 + timedelta(minutes=1)).isoformat()},
    )  # fmt: skip
    assert drain() == 2
    send(
        client,
        write_key,
        page(anon, "https://www.example.com/p", T0 + timedelta(days=2), "https://www.zhihu.com/"),
        {"type": "track", "anonymousId": anon, "event": "Viewed Pricing",
         "timestamp": (T0 + timedelta(days=2, minutes=1)).isoformat()},
        {"type": "track", "anonymousId": anon, "event": "Requested Demo",
         "timestamp": (T0 + timedelta(days=2, minutes=2)).isoformat()},
        {"type": "identify", "anonymousId": anon, "traits": {"plan": "team"},
         "context": {"timezone": "Asia/Shanghai"},
         "timestamp": (T0 + timedelta(days=2, minutes=3)).isoformat()},
    )  # fmt: skip
    assert drain() == 4
    [contact] = contacts()
    assert contact.page_views == 2
    assert contact.event_counts == {"Viewed Pricing": 2, "Requested Demo": 1}
    assert (contact.first_seen_at, contact.last_seen_at) == (
        T0,
        T0 + timedelta(days=2, minutes=3),
    )
    assert (contact.first_touch_channel, contact.first_touch_at) == ("paid_search", T0)
    assert (contact.last_touch_channel, contact.last_touch_at) == (
        "organic_social",
        T0 + timedelta(days=2),
    )
    assert contact.traits == {"plan": "team"}
    assert contact.timezone == "Asia/Shanghai"
    assert not contact.is_known and contact.lifecycle_stage is None


def test_a_contact_inserted_whole_has_the_profile_the_step_by_step_path_gives_it(pg_backend):
    # PostgreSQL only: new contacts are COPYed with their whole profile there (whole_profile),
    # and the step-by-step path (store_in_steps) is what a batch falls back to after a race.
    with session_scope() as session:
        _, write_key = create_source(session, "whole site", ["https://www.example.com"])
    at = [(T0 + timedelta(minutes=minutes)).isoformat() for minutes in range(60)]
    with TestClient(create_app()) as client:
        send(
            client,
            write_key,
            page("ann", "https://www.example.com/?utm_source=baidu&utm_medium=cpc&utm_campaign=crm",
                 T0, "https://www.baidu.com/s?wd=crm"),
            {"type": "track", "anonymousId": "ann", "event": "Viewed Pricing",
             "properties": {"plan": "team"}, "timestamp": at[1]},
            {"type": "identify", "anonymousId": "ann", "userId": "u-ann", "timestamp": at[2],
             "traits": {"email": "Ann@Corp.CN", "phone": "13800138000", "name": "Ann",
                        "title": None},
             "context": {"timezone": "Asia/Shanghai"}},
            page("bob", "https://www.example.com/pricing", T0 + timedelta(minutes=3),
                 "https://mp.weixin.qq.com/"),
            page("bob", "https://www.example.com/demo", T0 + timedelta(minutes=50)),
            {"type": "track", "anonymousId": "bob", "event": "Requested Demo", "timestamp": at[51]},
            {"type": "identify", "userId": "u-cat", "traits": {"company": "Acme"},
             "timestamp": at[4]},
        )  # fmt: skip
    envelopes = decode_entries(get_queue().take("whole-or-steps", 100, 0))
    profiles = []
    for path in (_stored_whole, _stored_in_steps):
        with session_scope() as session:
            session.execute(text("TRUNCATE contacts CASCADE"))
        with session_scope() as session:
            path(session, parse_batch(envelopes).messages)
        profiles.append(_profiles_by_identity())
    whole, in_steps = profiles
    assert whole == in_steps
    assert len(whole) == 3


def _stored_whole(session: Session, messages: list[ingest.Message]) -> None:
    messages.sort(key=lambda m: m.timestamp)
    with session.begin_nested():  # RaceLost, which nothing here should cause, would raise
        ingest.store_with_whole_new_contacts(session, messages, ingest.BatchResult())


def _stored_in_steps(session: Session, messages: list[ingest.Message]) -> None:
    messages.sort(key=lambda m: m.timestamp)
    ingest.store_in_steps(session, messages, ingest.BatchResult())


def _profiles_by_identity() -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    """Every contact's profile columns (its own ids and write times left out), keyed by its
    identities, so two runs that made different contact ids compare."""
    left_out = {"id", "created_at", "updated_at"}
    with session_scope() as session:
        keys: dict[Any, list[tuple[str, str]]] = {}
        for identity in session.scalars(select(Identity)):
            keys.setdefault(identity.contact_id, []).append((identity.kind, identity.value))
        return {
            tuple(sorted(keys[contact.id])): {
                column.key: getattr(contact, column.key)
                for column in Contact.__table__.columns
                if column.key not in left_out
            }
            for contact in session.scalars(select(Contact))
        }
