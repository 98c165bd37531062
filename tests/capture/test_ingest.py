"""The ingest worker end to end: tracking API → queue → drain → contacts, visits, events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from capture.merge import merge_contacts
from capture.models import BotHit, Company, Contact, Event, Identity, Visit
from core import feed
from core.clock import clock
from core.db import session_scope
from tests.conftest import drain

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def page(anon: str, url: str, at: datetime, referrer: str = "", **extra: object) -> dict:
    return {
        "type": "page",
        "anonymousId": anon,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "properties": {"url": url, "referrer": referrer},
        "context": {"userAgent": CHROME},
        **extra,
    }


def send(client: TestClient, write_key: str, *messages: dict) -> None:
    response = client.post("/v1/batch", json={"batch": list(messages)}, auth=(write_key, ""))
    assert response.status_code == 200, response.text


def contacts() -> list[Contact]:
    with session_scope() as session:
        return list(session.scalars(select(Contact).where(Contact.merged_into_id.is_(None))))


def events_of(contact_id: uuid.UUID) -> list[Event]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Event).where(Event.contact_id == contact_id).order_by(Event.timestamp)
            )
        )


@pytest.fixture(autouse=True)
def frozen_clock() -> None:
    clock.freeze(T0 + timedelta(hours=5))


def test_anonymous_history_joins_the_contact_that_identifies(client, write_key):
    anon = "anon-1"
    send(
        client,
        write_key,
        page(
            anon,
            "https://www.example.com/?utm_source=baidu&utm_medium=cpc&utm_campaign=spring",
            T0,
            "https://www.baidu.com/s?wd=crm",
        ),
        page(anon, "https://www.example.com/pricing", T0 + timedelta(minutes=3)),
    )
    assert drain() == 2
    send(
        client,
        write_key,
        {
            "type": "identify",
            "anonymousId": anon,
            "userId": "u-1",
            "traits": {"email": " Li.Wei@Example.COM ", "phone": "138-0013-8000", "name": "李伟"},
            "timestamp": (T0 + timedelta(minutes=5)).isoformat(),
        },
        {
            "type": "track",
            "userId": "u-1",
            "event": "Whitepaper Downloaded",
            "properties": {"title": "制造业白皮书"},
            "timestamp": (T0 + timedelta(minutes=6)).isoformat(),
        },
    )
    assert drain() == 2

    [contact] = contacts()
    assert contact.is_known
    assert (contact.user_id, contact.email, contact.phone) == (
        "u-1",
        "li.wei@example.com",
        "+8613800138000",
    )
    assert contact.traits["name"] == "李伟"
    assert contact.page_views == 2
    assert contact.event_counts == {"Whitepaper Downloaded": 1}
    assert contact.first_touch_channel == "paid_search"
    assert (contact.first_touch_source, contact.first_touch_campaign) == ("baidu", "spring")
    assert contact.first_seen_at == T0
    assert contact.lifecycle_stage == "subscriber"
    assert [e.type for e in events_of(contact.id)] == ["page", "page", "identify", "track"]
    with session_scope() as session:
        kinds = set(
            session.execute(
                select(Identity.kind, Identity.value).where(Identity.contact_id == contact.id)
            ).all()
        )
    assert kinds == {
        ("anonymous", anon),
        ("user_id", "u-1"),
        ("email", "li.wei@example.com"),
        ("phone", "+8613800138000"),
    }


def test_replaying_the_same_messages_changes_nothing(client, write_key):
    messages = [page("anon-r", f"https://www.example.com/p{i}", T0 + timedelta(minutes=i))
                for i in range(3)]  # fmt: skip
    send(client, write_key, *messages)
    assert drain() == 3
    send(client, write_key, *messages)
    send(client, write_key, *messages[:1], *messages[:1])
    assert drain() == 0
    [contact] = contacts()
    assert contact.page_views == 3
    assert len(events_of(contact.id)) == 3


def test_same_email_on_two_devices_is_one_contact(client, write_key):
    for anon in ("phone-device", "laptop"):
        send(
            client,
            write_key,
            page(anon, "https://www.example.com/", T0),
            {"type": "identify", "anonymousId": anon, "traits": {"email": "wang@corp.cn"}},
        )
        drain()
    [contact] = contacts()
    assert contact.email == "wang@corp.cn"
    assert contact.page_views == 2
    with session_scope() as session:
        merged = session.scalar(
            select(func.count()).select_from(Contact).where(Contact.merged_into_id == contact.id)
        )
    assert merged == 1


def test_two_known_people_on_one_browser_are_not_merged(client, write_key):
    anon = "shared-computer"
    send(client, write_key, {"type": "identify", "anonymousId": anon, "userId": "alice"})
    drain()
    send(client, write_key, {"type": "identify", "anonymousId": anon, "userId": "bob"})
    drain()
    people = {c.user_id: c for c in contacts()}
    assert set(people) == {"alice", "bob"}
    assert all(c.merged_into_id is None for c in people.values())


def test_alias_links_previous_id_to_user(client, write_key):
    send(client, write_key, page("old-anon", "https://www.example.com/", T0))
    drain()
    send(client, write_key, {"type": "alias", "previousId": "old-anon", "userId": "u-9"})
    drain()
    [contact] = contacts()
    assert contact.user_id == "u-9"
    assert contact.page_views == 1


def test_visits_split_on_inactivity_and_on_a_new_campaign(client, write_key):
    anon = "visitor"
    send(
        client,
        write_key,
        page(anon, "https://www.example.com/a", T0, "https://www.zhihu.com/question/1"),
        page(anon, "https://www.example.com/b", T0 + timedelta(minutes=20)),
        page(anon, "https://www.example.com/c", T0 + timedelta(minutes=55)),
        page(
            anon,
            "https://www.example.com/d?utm_source=newsletter&utm_medium=email&utm_campaign=may",
            T0 + timedelta(minutes=60),
        ),
    )
    drain()
    [contact] = contacts()
    with session_scope() as session:
        visits = list(
            session.scalars(
                select(Visit).where(Visit.contact_id == contact.id).order_by(Visit.started_at)
            )
        )
    assert [(v.channel, v.page_views) for v in visits] == [
        ("organic_social", 2),
        ("direct", 1),
        ("email", 1),
    ]
    assert contact.first_touch_channel == "organic_social"
    assert (contact.last_touch_channel, contact.last_touch_campaign) == ("email", "may")
    assert [e.channel for e in events_of(contact.id)] == [
        "organic_social",
        "organic_social",
        "direct",
        "email",
    ]


def test_a_visit_continues_across_batches(client, write_key):
    send(client, write_key, page("v2", "https://www.example.com/a", T0))
    drain()
    send(client, write_key, page("v2", "https://www.example.com/b", T0 + timedelta(minutes=10)))
    drain()
    with session_scope() as session:
        visits = list(session.scalars(select(Visit)))
    assert len(visits) == 1 and visits[0].page_views == 2


def test_bots_are_counted_and_kept_out_of_profiles(client, write_key):
    bot_page = page("crawler", "https://www.example.com/", T0)
    bot_page["context"] = {"userAgent": GOOGLEBOT}
    send(client, write_key, bot_page, bot_page | {"messageId": "m2"})
    assert drain() == 0
    assert contacts() == []
    with session_scope() as session:
        hits = session.scalar(select(func.sum(BotHit.hits)))
    assert hits == 2


def test_group_creates_company_and_links_contact(client, write_key):
    send(
        client,
        write_key,
        {"type": "group", "userId": "u-2", "groupId": "acme", "traits": {"name": "Acme 重庆"}},
    )
    drain()
    [contact] = contacts()
    with session_scope() as session:
        company = session.scalar(select(Company))
    assert company is not None and company.name == "Acme 重庆"
    assert contact.company_id == company.id


def test_change_feed_records_events_and_trait_changes(client, write_key):
    send(
        client,
        write_key,
        {"type": "identify", "userId": "u-3", "traits": {"plan": "free"}},
        {"type": "track", "userId": "u-3", "event": "Signed Up"},
    )
    drain()
    send(client, write_key, {"type": "identify", "userId": "u-3", "traits": {"plan": "pro"}})
    drain()
    with session_scope() as session:
        records = feed.read_since(session, 0, 100)
    kinds = [r.kind for r in records]
    assert kinds.count(feed.EVENT_STORED) == 3
    changes = [r.payload["changed"] for r in records if r.kind == feed.TRAITS_CHANGED]
    assert changes == [
        {"plan": {"old": None, "new": "free"}},
        {"plan": {"old": "free", "new": "pro"}},
    ]


def test_event_stored_changes_name_each_stored_event_in_storage_order(client, write_key):
    send(
        client,
        write_key,
        page("feed-reader", "https://www.example.com/", T0),
        {"type": "track", "anonymousId": "feed-reader", "event": "Viewed Pricing",
         "timestamp": (T0 + timedelta(minutes=1)).isoformat()},
    )  # fmt: skip
    drain()
    send(client, write_key, page("feed-reader", "https://www.example.com/b", T0 + timedelta(1)))
    drain()
    [contact] = contacts()
    with session_scope() as session:
        stored = [r for r in feed.read_since(session, 0, 100) if r.kind == feed.EVENT_STORED]
    events = sorted(events_of(contact.id), key=lambda event: event.id)
    assert [(r.contact_id, r.payload) for r in stored] == [
        (contact.id, {"event_id": e.id, "type": e.type, "name": e.name}) for e in events
    ]
    positions = [r.position for r in stored]
    assert None not in positions and positions == sorted(positions)


def test_backslashes_tabs_and_newlines_are_stored_exactly(client, write_key):
    # Ids and names refuse control characters at capture; page fields and JSON keep these.
    backslashes = "C:\\new\\table \\N end"
    awkward = "col\tcol\nline\r\n" + backslashes
    url = "https://www.example.com/a\\b?q=\\N\tx"
    send(
        client,
        write_key,
        page(
            "anon\\N1",
            url,
            T0,
            name=backslashes,
            properties={"url": url, "referrer": "https://ref.example.org/\\y\n", "note": awkward},
        ),
    )
    drain()
    [contact] = contacts()
    [event] = events_of(contact.id)
    assert (event.anonymous_id, event.name) == ("anon\\N1", backslashes)
    assert (event.url, event.referrer) == (url, "https://ref.example.org/\\y\n")
    assert event.properties["note"] == awkward


def test_control_characters_are_stripped_before_storage(client, write_key):
    send(
        client,
        write_key,
        {
            "type": "track",
            "userId": "u-4",
            "event": "Odd",
            "properties": {"note": "a\u0000b\u0007c", "k\u0001ey": "v"},
        },
    )
    drain()
    [contact] = contacts()
    [event] = events_of(contact.id)
    assert event.properties == {"note": "abc", "key": "v"}


def test_explicit_merge_moves_history_and_leaves_a_pointer(client, write_key):
    send(
        client,
        write_key,
        {"type": "identify", "userId": "a", "traits": {"email": "a@corp.cn"}},
        page("anon-a", "https://www.example.com/", T0, userId="a"),
        {"type": "identify", "userId": "b", "traits": {"email": "b@corp.cn", "title": "VP"}},
        {"type": "track", "userId": "b", "event": "Demo Requested"},
    )
    drain()
    people = {c.user_id: c for c in contacts()}
    with session_scope() as session:
        survivor = merge_contacts(session, people["a"].id, people["b"].id)
        assert survivor.traits["title"] == "VP"
    [contact] = contacts()
    assert contact.id == people["a"].id
    assert contact.event_counts == {"Demo Requested": 1}
    assert len(events_of(contact.id)) == 4
    with session_scope() as session:
        merged = session.get(Contact, people["b"].id)
        assert merged is not None and merged.merged_into_id == contact.id
        emails = set(
            session.scalars(
                select(Identity.value).where(
                    Identity.contact_id == contact.id, Identity.kind == "email"
                )
            )
        )
    assert emails == {"a@corp.cn", "b@corp.cn"}


def test_entries_of_a_worker_that_died_are_picked_up_again(client, write_key):
    from capture.queue import build_queue, get_queue
    from core.settings import get_settings

    send(client, write_key, page("crash", "https://www.example.com/", T0))
    taken = get_queue().take("worker-that-dies", 10, 0)
    assert len(taken) == 1  # claimed, never acked: the worker was killed mid-batch
    assert drain() == 0  # still claimed by the dead worker within the claim timeout
    impatient = build_queue(get_settings(), claim_timeout=0)
    assert drain_with(impatient) == 1
    assert len(contacts()) == 1
    assert impatient.take("another", 10, 0) == []


def drain_with(queue) -> int:
    from capture.ingest import drain_queue

    return drain_queue(queue, consumer="rescuer")
