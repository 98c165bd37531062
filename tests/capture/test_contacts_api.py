"""The contacts admin API on both backends: search, profile, timeline, edits, merge, export,
delete, and who may do what. Contacts and events are seeded with the ORM."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from capture.models import (
    Company,
    ConsentRecord,
    Contact,
    Event,
    Form,
    FormSubmission,
    Identity,
    Source,
)
from core import db, feed
from core.keys import Role
from tests.conftest import make_key

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SOURCE_ID = uuid.UUID("00000000-0000-0000-0000-0000000000a1")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def seed_contact(
    identities: dict[str, str] | None = None,
    merged_into: uuid.UUID | None = None,
    **fields: Any,
) -> uuid.UUID:
    identities = identities or {}
    with db.session_scope() as session:
        contact = Contact(
            email=identities.get("email"),
            phone=identities.get("phone"),
            user_id=identities.get("user_id"),
            is_known=any(k != "anonymous" for k in identities),
            merged_into_id=merged_into,
            **fields,
        )
        session.add(contact)
        session.flush()
        session.add_all(
            Identity(contact_id=contact.id, kind=kind, value=value)
            for kind, value in identities.items()
        )
        return contact.id


def seed_events(contact_id: uuid.UUID, count: int, start: datetime = T0) -> list[int]:
    with db.session_scope() as session:
        events = [
            Event(
                source_id=SOURCE_ID,
                message_id=f"m-{uuid.uuid4()}",
                contact_id=contact_id,
                type="track" if i % 2 else "page",
                name=f"event {i}",
                properties={"i": i},
                timestamp=start + timedelta(minutes=i),
                received_at=start + timedelta(minutes=i),
                url=f"https://www.example.com/p/{i}",
                channel="organic_search",
                device_type="desktop",
                os="Windows",
                browser="Chrome",
            )
            for i in range(count)
        ]
        session.add_all(events)
        session.flush()
        return [e.id for e in events]


def count(model: Any, **where: Any) -> int:
    with db.session_scope() as session:
        stmt = select(func.count()).select_from(model)
        for name, value in where.items():
            stmt = stmt.where(getattr(model, name) == value)
        return session.scalar(stmt) or 0


@pytest.fixture
def marketer(backend: Any) -> dict[str, str]:
    return auth(make_key(Role.marketer))


def walk(client: TestClient, url: str, headers: dict[str, str], limit: int) -> list[Any]:
    items: list[Any] = []
    cursor = None
    for _ in range(20):
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


# Listing and search


def test_list_filters_by_normalised_identity_text_stage_and_tag(
    client: TestClient, marketer: dict[str, str]
) -> None:
    ann = seed_contact(
        {"email": "ann@example.com", "phone": "+8613800138000", "user_id": "u-ann"},
        traits={"name": "Ann Lee"},
        tags=["vip", "webinar"],
        lifecycle_stage="mql",
        last_seen_at=T0,
    )
    bob = seed_contact(
        {"email": "bob@corp.cn", "user_id": "u-bob"},
        traits={"first_name": "Bob", "last_name": "Wang"},
        tags=["webinar"],
        lifecycle_stage="lead",
        last_seen_at=T0 + timedelta(hours=1),
    )
    seed_contact({"anonymous": "anon-1"}, last_seen_at=T0 + timedelta(hours=2))
    seed_contact({"email": "ann.old@example.com"}, merged_into=ann, traits={"name": "Ann Lee"})

    def ids(**params: Any) -> list[str]:
        response = client.get("/api/v1/contacts", params=params, headers=marketer)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    everyone = ids()
    assert len(everyone) == 3, "the merged contact is left out"
    assert everyone[1:] == [str(bob), str(ann)], "newest last_seen_at first"
    assert ids(email="  ANN@Example.com ") == [str(ann)]
    assert ids(phone="138 0013 8000") == [str(ann)]
    assert ids(phone="+86 138-0013-8000") == [str(ann)]
    assert ids(user_id="u-bob") == [str(bob)]
    assert ids(user_id="u-nobody") == []
    assert ids(q="ann l") == [str(ann)], "name trait, case-insensitive"
    assert ids(q="wang") == [str(bob)], "last name trait"
    assert ids(q="corp.cn") == [str(bob)], "part of an email"
    assert ids(q="U-AN") == [str(ann)], "part of a user id"
    assert ids(q="13800138") == [str(ann)], "part of a phone"
    assert ids(q="%") == [], "LIKE wildcards are matched literally"
    assert ids(q="_") == []
    assert ids(lifecycle_stage="lead") == [str(bob)]
    assert ids(tag="vip") == [str(ann)]
    assert ids(tag="webinar") == [str(bob), str(ann)]
    assert ids(tag="webinar", lifecycle_stage="mql") == [str(ann)]
    assert ids(tag="vi") == [], "a tag matches whole"

    item = client.get("/api/v1/contacts", params={"user_id": "u-bob"}, headers=marketer).json()
    assert item["items"][0]["name"] == "Bob Wang"
    assert item["items"][0]["email"] == "bob@corp.cn"


def test_list_pages_with_a_cursor_newest_first(
    client: TestClient, marketer: dict[str, str]
) -> None:
    seen = [T0 + timedelta(minutes=m) for m in (5, 1, 3, 3, 3, 4)]
    created = [seed_contact({"user_id": f"u{i}"}, last_seen_at=s) for i, s in enumerate(seen)]
    never_seen = [seed_contact({"user_id": f"n{i}"}) for i in range(2)]

    items = walk(client, "/api/v1/contacts", marketer, limit=2)
    got = [item["id"] for item in items]
    assert sorted(got) == sorted(str(c) for c in created + never_seen), "each exactly once"
    stamps = [item["last_seen_at"] for item in items]
    assert stamps[:2] == [None, None], "never-seen contacts come first, as on an index"
    assert stamps[2:] == sorted(stamps[2:], reverse=True)

    assert walk(client, "/api/v1/contacts", marketer, limit=200) == items
    assert len(walk(client, "/api/v1/contacts", marketer, limit=3)) == 8


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"phone": "12345"}, "phone"),
        ({"limit": 201}, "limit"),
        ({"limit": 0}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"cursor": "WzEsMiwzXQ"}, "cursor"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "x" * 201}, "q"),
    ],
)
def test_list_rejects_bad_filters_naming_the_field(
    client: TestClient, marketer: dict[str, str], params: dict[str, Any], field: str
) -> None:
    response = client.get("/api/v1/contacts", params=params, headers=marketer)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["fields"]


# Profile and timeline


def test_profile_has_identities_touches_counts_and_latest_consent(
    client: TestClient, marketer: dict[str, str]
) -> None:
    with db.session_scope() as session:
        company = Company(group_id="acme", name="Acme", traits={"industry": "saas"})
        session.add(company)
        session.flush()
        company_id = company.id
    contact_id = seed_contact(
        {"email": "ann@example.com", "phone": "+8613800138000", "anonymous": "a-1"},
        traits={"name": "Ann", "plan": "pro"},
        tags=["vip"],
        company_id=company_id,
        first_seen_at=T0,
        last_seen_at=T0 + timedelta(days=2),
        first_touch_at=T0,
        first_touch_channel="organic_search",
        first_touch_source="baidu",
        last_touch_at=T0 + timedelta(days=2),
        last_touch_channel="paid_social",
        last_touch_source="wechat",
        last_touch_medium="cpc",
        last_touch_campaign="spring",
        page_views=7,
        event_counts={"Signed Up": 1, "Viewed Pricing": 3},
        lifecycle_stage="mql",
        email_consent="denied",
        sms_consent="granted",
        sms_unsubscribed=True,
    )
    with db.session_scope() as session:
        for channel, granted, text, at in (
            ("email", True, "Email me news", T0),
            ("email", False, "Stop emails", T0 + timedelta(hours=1)),
            ("sms", True, "Text me", T0 + timedelta(minutes=5)),
        ):
            session.add(
                ConsentRecord(
                    contact_id=contact_id,
                    channel=channel,
                    granted=granted,
                    text=text,
                    ip="203.0.113.0",
                    page_url="https://www.example.com/signup",
                    source_id=SOURCE_ID,
                    recorded_at=at,
                )
            )

    response = client.get(f"/api/v1/contacts/{contact_id}", headers=marketer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["merged_into"] is None
    assert {(i["kind"], i["value"]) for i in body["identities"]} == {
        ("email", "ann@example.com"),
        ("phone", "+8613800138000"),
        ("anonymous", "a-1"),
    }
    assert body["traits"] == {"name": "Ann", "plan": "pro"}
    assert body["tags"] == ["vip"]
    assert body["company"]["name"] == "Acme"
    assert body["first_touch"]["channel"] == "organic_search"
    assert body["first_touch"]["source"] == "baidu"
    assert body["latest_touch"] == {
        "at": "2026-03-03T09:00:00Z",
        "channel": "paid_social",
        "source": "wechat",
        "medium": "cpc",
        "campaign": "spring",
    }
    assert body["page_views"] == 7
    assert body["event_counts"] == {"Signed Up": 1, "Viewed Pricing": 3}
    assert body["lifecycle_stage"] == "mql"
    email = body["consent"]["email"]
    assert email["status"] == "denied"
    assert email["latest_record"]["text"] == "Stop emails"
    assert email["latest_record"]["granted"] is False
    assert email["latest_record"]["ip"] == "203.0.113.0"
    assert email["latest_record"]["page_url"] == "https://www.example.com/signup"
    assert email["latest_record"]["source_id"] == str(SOURCE_ID)
    assert body["consent"]["sms"]["latest_record"]["text"] == "Text me"
    assert body["consent"]["sms"]["unsubscribed"] is True
    assert body["unsubscribed"] is False
    assert body["suppressed"] is False


def test_profile_of_unknown_or_malformed_id(client: TestClient, marketer: dict[str, str]) -> None:
    response = client.get(f"/api/v1/contacts/{uuid.uuid4()}", headers=marketer)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    for path in ("/api/v1/contacts/not-a-uuid", "/api/v1/contacts/not-a-uuid/timeline"):
        response = client.get(path, headers=marketer)
        assert response.status_code == 422
        assert "contact_id" in response.json()["error"]["fields"]


def test_timeline_is_newest_first_and_pages(client: TestClient, marketer: dict[str, str]) -> None:
    contact_id = seed_contact({"user_id": "u1"})
    other = seed_contact({"user_id": "u2"})
    seed_events(contact_id, 5)
    seed_events(contact_id, 2, start=T0 + timedelta(minutes=2))  # ties on the timestamp
    seed_events(other, 3)

    url = f"/api/v1/contacts/{contact_id}/timeline"
    items = walk(client, url, marketer, limit=2)
    assert len(items) == 7
    assert len({item["id"] for item in items}) == 7
    keys = [(item["timestamp"], item["id"]) for item in items]
    assert keys == sorted(keys, reverse=True)
    first = items[0]
    assert first["name"] == "event 4"
    assert first["type"] == "page"
    assert first["properties"] == {"i": 4}
    assert first["url"] == "https://www.example.com/p/4"
    assert first["channel"] == "organic_search"
    assert first["device"] == {"type": "desktop", "os": "Windows", "browser": "Chrome"}

    assert client.get(url, params={"cursor": "e30"}, headers=marketer).status_code == 422
    response = client.get(f"/api/v1/contacts/{uuid.uuid4()}/timeline", headers=marketer)
    assert response.status_code == 404


# Edits


def change_records(contact_id: uuid.UUID, kind: str) -> list[dict[str, Any]]:
    with db.session_scope() as session:
        return [
            r.payload
            for r in session.scalars(
                select(feed.ChangeRecord)
                .where(feed.ChangeRecord.contact_id == contact_id, feed.ChangeRecord.kind == kind)
                .order_by(feed.ChangeRecord.id)
            )
        ]


def test_patch_merges_traits_edits_tags_and_publishes_the_change(
    client: TestClient, marketer: dict[str, str]
) -> None:
    contact_id = seed_contact(
        {"email": "ann@example.com"},
        traits={"plan": "free", "title": "CTO", "seats": 3},
        tags=["webinar", "old"],
    )
    url = f"/api/v1/contacts/{contact_id}"
    response = client.patch(
        url,
        json={
            "traits": {"plan": "pro", "title": None, "seats": 3, "langs": ["zh", "en"]},
            "add_tags": ["vip", "webinar"],
            "remove_tags": ["old"],
        },
        headers=marketer,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["traits"] == {"plan": "pro", "seats": 3, "langs": ["zh", "en"]}
    assert body["tags"] == ["webinar", "vip"]

    [payload] = change_records(contact_id, feed.TRAITS_CHANGED)
    assert payload["changed"] == {
        "langs": {"old": None, "new": ["zh", "en"]},
        "plan": {"old": "free", "new": "pro"},
        "title": {"old": "CTO", "new": None},
    }
    assert payload["tags"] == {"old": ["webinar", "old"], "new": ["webinar", "vip"]}

    response = client.patch(url, json={"tags": ["a", "b", "a"]}, headers=marketer)
    assert response.json()["tags"] == ["a", "b"]
    assert client.get(url, headers=marketer).json()["tags"] == ["a", "b"]

    client.patch(url, json={"traits": {"plan": "pro"}, "tags": ["a", "b"]}, headers=marketer)
    assert len(change_records(contact_id, feed.TRAITS_CHANGED)) == 2, "no change, no record"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"traits": {"notes": "x" * 11_000}}, "traits.notes"),
        ({"traits": {"k" * 101: 1}}, "traits"),
        ({"traits": {"address": {"city": "Shanghai"}}}, "traits.address"),
        ({"traits": {"list": [[1]]}}, "traits.list"),
        ({"traits": {"bad": "a\u0000b"}}, "traits.bad"),
        (b'{"traits": {"bad": ["ok", "\\ud800"]}}', "traits.bad"),
        ({"traits": {"email": "new@example.com"}}, "traits"),
        ({"tags": ["a"], "add_tags": ["b"]}, "add_tags"),
        ({"add_tags": [""]}, "add_tags.0"),
        ({"add_tags": ["t" * 101]}, "add_tags.0"),
        ({"lifecycle_stage": "customer"}, "lifecycle_stage"),
    ],
)
def test_patch_rejects_bad_input_and_changes_nothing(
    client: TestClient, marketer: dict[str, str], body: dict[str, Any] | bytes, field: str
) -> None:
    contact_id = seed_contact({"user_id": "u1"}, traits={"plan": "free"}, tags=["x"])
    url = f"/api/v1/contacts/{contact_id}"
    if isinstance(body, bytes):  # a lone surrogate, which httpx cannot encode itself
        headers = {**marketer, "Content-Type": "application/json"}
        response = client.patch(url, content=body, headers=headers)
    else:
        response = client.patch(url, json=body, headers=marketer)
    assert response.status_code == 422, response.text
    fields = response.json()["error"]["fields"]
    assert any(name.startswith(field) for name in fields), fields
    after = client.get(url, headers=marketer).json()
    assert (after["traits"], after["tags"]) == ({"plan": "free"}, ["x"])
    assert change_records(contact_id, feed.TRAITS_CHANGED) == []


def test_patch_unknown_or_merged_contact(client: TestClient, marketer: dict[str, str]) -> None:
    response = client.patch(f"/api/v1/contacts/{uuid.uuid4()}", json={}, headers=marketer)
    assert response.status_code == 404
    survivor = seed_contact({"user_id": "u1"})
    merged = seed_contact({"user_id": "u2"}, merged_into=survivor)
    response = client.patch(f"/api/v1/contacts/{merged}", json={"tags": ["a"]}, headers=marketer)
    assert response.status_code == 409
    assert str(survivor) in response.json()["error"]["message"]


# Merge


def test_merge_moves_history_and_leaves_a_pointer(
    client: TestClient, marketer: dict[str, str]
) -> None:
    into = seed_contact({"email": "ann@work.com", "user_id": "u-ann"}, traits={"plan": "pro"})
    source = seed_contact(
        {"email": "ann@home.com", "anonymous": "a-9"}, traits={"plan": "free", "city": "SH"}
    )
    seed_events(into, 2)
    seed_events(source, 3)

    response = client.post(
        f"/api/v1/contacts/{into}/merge", json={"from_contact_id": str(source)}, headers=marketer
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == str(into)
    assert body["traits"] == {"plan": "pro", "city": "SH"}
    assert {i["value"] for i in body["identities"]} == {
        "ann@work.com",
        "u-ann",
        "ann@home.com",
        "a-9",
    }
    timeline = client.get(f"/api/v1/contacts/{into}/timeline", headers=marketer).json()
    assert len(timeline["items"]) == 5

    merged = client.get(f"/api/v1/contacts/{source}", headers=marketer)
    assert merged.status_code == 200
    assert merged.json()["merged_into"] == str(into)
    listed = client.get("/api/v1/contacts", headers=marketer).json()["items"]
    assert [item["id"] for item in listed] == [str(into)]
    found = client.get("/api/v1/contacts", params={"email": "ann@home.com"}, headers=marketer)
    assert [item["id"] for item in found.json()["items"]] == [str(into)]
    assert change_records(into, feed.CONTACT_MERGED) == [{"merged_contact_id": str(source)}]


def test_merge_errors_name_the_problem(client: TestClient, marketer: dict[str, str]) -> None:
    a = seed_contact({"user_id": "a"})
    b = seed_contact({"user_id": "b"})
    gone = seed_contact({"user_id": "c"}, merged_into=a)

    def merge(into: Any, body: Any) -> Any:
        return client.post(f"/api/v1/contacts/{into}/merge", json=body, headers=marketer)

    response = merge(a, {"from_contact_id": str(a)})
    assert response.status_code == 422
    assert "from_contact_id" in response.json()["error"]["fields"]
    response = merge(a, {"from_contact_id": str(uuid.uuid4())})
    assert response.status_code == 422
    assert "from_contact_id" in response.json()["error"]["fields"]
    assert merge(uuid.uuid4(), {"from_contact_id": str(a)}).status_code == 404
    response = merge(b, {"from_contact_id": str(gone)})
    assert response.status_code == 422
    assert "already merged" in response.json()["error"]["message"]
    response = merge(gone, {"from_contact_id": str(b)})
    assert response.status_code == 422
    assert "contact_id" in response.json()["error"]["fields"]
    response = merge(a, {"from_contact_id": "nope"})
    assert response.status_code == 422
    assert "from_contact_id" in response.json()["error"]["fields"]
    assert merge(a, {}).status_code == 422
    with db.session_scope() as session:
        assert session.get(Contact, b).merged_into_id is None  # type: ignore[union-attr]


# Export and delete (PIPL)


def seed_person_with_everything() -> tuple[uuid.UUID, uuid.UUID]:
    """A contact with events, a visit, consent, a form submission and a merged contact."""
    contact_id = seed_contact(
        {"email": "ann@example.com", "phone": "+8613800138000"}, traits={"name": "Ann"}
    )
    merged = seed_contact({"email": "ann@old.com"}, merged_into=contact_id)
    seed_events(contact_id, 3)
    with db.session_scope() as session:
        source = Source(name="site", write_key_hash="h" * 64, write_key_prefix="wk_x")
        session.add(source)
        session.flush()
        form = Form(source_id=source.id, name="Demo")
        session.add(form)
        session.flush()
        session.add_all(
            [
                FormSubmission(
                    form_id=form.id,
                    contact_id=contact_id,
                    status="accepted",
                    data={"email": "ann@example.com", "name": "Ann"},
                    ip="203.0.113.0",
                    page_url="https://www.example.com/demo",
                    user_agent="Mozilla/5.0",
                    anonymous_id="a-1",
                ),
                ConsentRecord(
                    contact_id=contact_id, channel="email", granted=True, text="Email me"
                ),
            ]
        )
        from capture.models import Visit

        session.add(
            Visit(
                contact_id=contact_id,
                source_id=source.id,
                started_at=T0,
                last_event_at=T0,
                channel="direct",
            )
        )
    return contact_id, merged


def test_export_holds_all_data_of_the_contact(client: TestClient, marketer: dict[str, str]) -> None:
    contact_id, merged = seed_person_with_everything()
    seed_events(seed_contact({"user_id": "someone else"}), 2)

    response = client.get(f"/api/v1/contacts/{contact_id}/export", headers=marketer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["profile"]["traits"] == {"name": "Ann"}
    assert {i["value"] for i in body["identities"]} == {"ann@example.com", "+8613800138000"}
    assert [e["name"] for e in body["events"]] == ["event 0", "event 1", "event 2"]
    assert len(body["visits"]) == 1
    assert body["consent_records"][0]["text"] == "Email me"
    assert body["form_submissions"][0]["data"] == {"email": "ann@example.com", "name": "Ann"}
    assert [m["id"] for m in body["merged_contacts"]] == [str(merged)]
    assert client.get(f"/api/v1/contacts/{uuid.uuid4()}/export", headers=marketer).status_code == (
        404
    )


def test_delete_erases_the_person_and_keeps_others(
    client: TestClient, marketer: dict[str, str]
) -> None:
    from capture.models import Visit

    contact_id, merged = seed_person_with_everything()
    other = seed_contact({"email": "bob@example.com"}, traits={"name": "Bob"})
    seed_events(other, 2)
    client.patch(f"/api/v1/contacts/{contact_id}", json={"traits": {"x": 1}}, headers=marketer)

    response = client.delete(f"/api/v1/contacts/{contact_id}", headers=marketer)
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(f"/api/v1/contacts/{contact_id}", headers=marketer).status_code == 404
    assert client.get(f"/api/v1/contacts/{merged}", headers=marketer).status_code == 404
    assert client.delete(f"/api/v1/contacts/{contact_id}", headers=marketer).status_code == 404

    for gone in (contact_id, merged):
        assert count(Contact, id=gone) == 0
        assert count(Identity, contact_id=gone) == 0
        assert count(Event, contact_id=gone) == 0
        assert count(Visit, contact_id=gone) == 0
        assert count(ConsentRecord, contact_id=gone) == 0
    assert count(Identity, value="ann@old.com") == 0
    with db.session_scope() as session:
        submission = session.scalars(select(FormSubmission)).one()
        assert submission.contact_id is None
        assert (submission.data, submission.ip, submission.page_url) == ({}, None, None)
        assert (submission.user_agent, submission.anonymous_id) == (None, None)
        assert submission.status == "accepted", "the form keeps its count"
    assert change_records(contact_id, feed.TRAITS_CHANGED) == []
    [audit] = change_records(contact_id, "contact_deleted")
    assert audit["merged_contact_ids"] == [str(merged)]
    assert "ann" not in str(audit).lower()

    assert count(Event, contact_id=other) == 2
    assert client.get(f"/api/v1/contacts/{other}", headers=marketer).json()["traits"] == {
        "name": "Bob"
    }


# Roles


READS = [
    ("get", "/api/v1/contacts", None),
    ("get", "/api/v1/contacts/{id}", None),
    ("get", "/api/v1/contacts/{id}/timeline", None),
    ("get", "/api/v1/contacts/{id}/export", None),
]
WRITES = [
    ("patch", "/api/v1/contacts/{id}", {"tags": ["a"]}),
    ("post", "/api/v1/contacts/{id}/merge", {"from_contact_id": "{other}"}),
    ("delete", "/api/v1/contacts/{id}", None),
]


def call(client: TestClient, method: str, path: str, body: Any, key: str, **ids: Any) -> int:
    url = path.format(**ids)
    kwargs: dict[str, Any] = {"headers": auth(key)}
    if body is not None:
        kwargs["json"] = {k: v.format(**ids) if isinstance(v, str) else v for k, v in body.items()}
    return client.request(method.upper(), url, **kwargs).status_code


def test_roles_on_every_contact_endpoint(client: TestClient, admin_key: str) -> None:
    keys = {role: make_key(role) for role in Role}
    keys[Role.admin] = admin_key
    readers = {Role.admin, Role.marketer, Role.manager}
    writers = {Role.admin, Role.marketer}
    for method, path, body in READS + WRITES:
        allowed = readers if (method, path, body) in READS else writers
        for role, key in keys.items():
            contact_id = seed_contact({"user_id": f"u-{uuid.uuid4()}"})
            other = seed_contact({"user_id": f"u-{uuid.uuid4()}"})
            status = call(client, method, path, body, key, id=contact_id, other=other)
            if role in allowed:
                assert status in (200, 204), (method, path, role, status)
            else:
                assert status == 403, (method, path, role, status)
            no_auth = client.request(method.upper(), path.format(id=contact_id)).status_code
            assert no_auth == 401
