"""The dossier a rep reads, and the notifications that go out through the channels' robots
(against the local fake WeCom and DingTalk servers)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from attribution import credits
from attribution.service import record_conversion
from capture.models import Contact, Event, Visit
from channels.models import Delivery
from core.clock import clock
from core.db import session_scope
from handoff.service import enforce_sla
from journeys.models import Enrollment, Journey, JourneyVersion
from tests.channels.fakes import FakeRobots, MailHandler
from tests.handoff.conftest import (
    auth,
    key_for,
    make_contact,
    make_rep,
    make_rule,
    make_team,
    route,
)


def add_event(
    contact_id: uuid.UUID, name: str | None, path: str | None = None, hours_ago: int = 2
) -> None:
    with session_scope() as session:
        session.execute(
            insert(Event).values(
                source_id=uuid.uuid4(),
                message_id=str(uuid.uuid4()),
                contact_id=contact_id,
                type="page" if path else "track",
                name=name,
                path=path,
                url=f"https://acme.example{path}" if path else None,
                properties={},
                context={},
                timestamp=clock.now() - timedelta(hours=hours_ago),
                received_at=clock.now(),
            )
        )


def hot_contact() -> uuid.UUID:
    contact = make_contact(
        {"name": "Wang Fang", "title": "VP of Operations", "city": "Chongqing"},
        email="wang@cq-machines.cn",
        company={"name": "CQ Machines", "size": 300, "industry": "manufacturing"},
    )
    for _ in range(3):
        add_event(contact, None, "/pricing")
    add_event(contact, "whitepaper_downloaded")
    add_event(contact, "became_mql", hours_ago=1)
    now = clock.now()
    with session_scope() as session:
        session.execute(
            update(Contact)
            .where(Contact.id == contact)
            .values(
                page_views=3,
                first_touch_channel="paid_search",
                first_touch_source="baidu",
                last_touch_channel="paid_search",
                last_touch_source="baidu",
                last_touch_medium="cpc",
                last_touch_campaign="spring-expo",
            )
        )
        journey = Journey(id=uuid.uuid4(), name="Manufacturing nurture", status="live")
        version = JourneyVersion(id=uuid.uuid4(), journey_id=journey.id, number=1)
        session.add_all([journey, version])
        session.flush()
        session.add(
            Enrollment(
                journey_id=journey.id, version_id=version.id, contact_id=contact, current_node="a"
            )
        )
        session.execute(
            insert(Visit).values(
                id=uuid.uuid4(),
                contact_id=contact,
                source_id=uuid.uuid4(),
                started_at=now,
                last_event_at=now,
                channel="paid_search",
                utm_source="baidu",
                utm_campaign="spring-expo",
            )
        )
    return contact


def test_dossier_tells_the_whole_story(client: TestClient, admin_key: str, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    first = make_rep("First")
    routed = route(hot_contact())
    clock.advance(timedelta(minutes=16))
    with session_scope() as session:
        assert enforce_sla(session) == 1  # nobody else to take it: it waits
    url = f"/api/v1/handoff/leads/{routed.id}/dossier"
    assert client.get(url, headers=auth(key_for(first))).status_code == 404
    admin_view = client.get(url, headers=auth(admin_key))
    assert admin_view.status_code == 200, admin_view.text
    body: dict[str, Any] = admin_view.json()
    assert body["summary"] == (
        "Viewed /pricing 3× this week after a baidu cpc; whitepaper downloaded; "
        "VP of Operations at a 300-person firm in Chongqing"
    )
    assert body["who"]["company"]["name"] == "CQ Machines"
    assert body["who"]["email"] == "wang@cq-machines.cn"
    assert body["why_now"]["mql_event"] is not None
    assert {"score", "grade", "prediction", "by_rule"} <= set(body["why_now"])
    assert body["what_they_did"]["top_pages"] == [{"path": "/pricing", "views": 3}]
    assert [e["what"] for e in body["what_they_did"]["timeline"]] == [
        "became mql",
        "whitepaper downloaded",
    ]
    assert body["how_they_came"]["last_touch"]["campaign"] == "spring-expo"
    assert body["how_they_came"]["channels"] == [
        {"channel": "paid_search", "source": "baidu", "campaign": "spring-expo", "visits": 1}
    ]
    assert [(j["name"], j["status"]) for j in body["journeys"]] == [
        ("Manufacturing nurture", "active")
    ]
    assert [(o["rep_name"], o["outcome"]) for o in body["previous_owners"]] == [
        ("First", "sla_missed")
    ]


def create_robot(client: TestClient, admin_key: str, **body: Any) -> str:
    answer = client.post("/api/v1/robots", json=body, headers=auth(admin_key))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_rep_and_manager_are_notified_through_wecom_and_dingtalk(
    channels_env: None, robots: FakeRobots, client: TestClient, admin_key: str, now: datetime
) -> None:
    wecom = create_robot(client, admin_key, name="Rep", kind="wecom", webhook_url=robots.wecom_url)
    dingtalk = create_robot(
        client,
        admin_key,
        name="Managers",
        kind="dingtalk",
        webhook_url=robots.dingtalk_url,
        secret=robots.dingtalk_secret,
    )
    make_rule("pool", 10, "pool")
    team = make_team("East", robot_id=uuid.UUID(dingtalk))
    make_rep("Li", team_id=team, robot_id=uuid.UUID(wecom))
    routed = route(hot_contact())
    assert robots.errors == []
    kind, body = robots.posts[0]
    content = body["markdown"]["content"]
    assert kind == "wecom" and "New lead for Li" in content
    assert "VP of Operations at a 300-person firm in Chongqing" in content
    assert f"/api/v1/handoff/leads/{routed.id}/dossier" in content
    clock.advance(timedelta(minutes=15))
    with session_scope() as session:
        enforce_sla(session)
    kind, body = robots.posts[1]
    assert kind == "dingtalk" and "SLA missed by Li" in body["markdown"]["text"]
    assert len(robots.posts) == 2


def test_a_rep_who_asked_for_email_gets_each_new_lead_by_email(
    channels_env: None,
    smtp_server: tuple[int, MailHandler],
    client: TestClient,
    admin_key: str,
    now: datetime,
) -> None:
    mailbox = smtp_server[1]
    refused = client.post(
        "/api/v1/handoff/reps",
        json={"name": "No address", "notify_by_email": True},
        headers=auth(admin_key),
    )
    assert refused.status_code == 422 and "notify_by_email" in refused.text
    make_rule("pool", 10, "pool")
    first = make_rep("Li Na", email="Li.Na@Acme.example", notify_by_email=True, weight=2)
    make_rep("Quiet", email="quiet@acme.example")  # has an address, did not ask for email
    routed = route(hot_contact())
    assert routed.rep_id == first
    [mail] = mailbox.messages
    assert mail.recipients == ["li.na@acme.example"]
    assert mail.message["Subject"] == "New lead for Li Na"
    assert "VP of Operations at a 300-person firm in Chongqing" in mail.part("html")
    assert f"/api/v1/handoff/leads/{routed.id}/dossier" in mail.part("plain")
    with session_scope() as session:
        [delivery] = session.scalars(select(Delivery).where(Delivery.to_address.is_not(None)))
        assert (delivery.contact_id, delivery.status) == (None, "sent")
    clock.advance(timedelta(minutes=16))
    with session_scope() as session:
        assert enforce_sla(session) == 1  # moved on to "Quiet", who gets no email
    assert len(mailbox.messages) == 1


def test_the_dossier_shows_touchpoints_and_each_channels_credit(
    client: TestClient, admin_key: str, now: datetime
) -> None:
    make_rule("pool", 10, "pool")
    make_rep("Rep")
    contact = hot_contact()  # a paid_search visit from the spring-expo campaign, now
    with session_scope() as session:
        session.execute(
            insert(Visit).values(
                id=uuid.uuid4(),
                contact_id=contact,
                source_id=uuid.uuid4(),
                started_at=now - timedelta(days=3),
                last_event_at=now - timedelta(days=3),
                channel="organic_search",
                utm_source="baidu",
            )
        )
        session.execute(
            insert(Event).values(
                source_id=uuid.uuid4(),
                message_id=str(uuid.uuid4()),
                contact_id=contact,
                type="track",
                name="email_clicked",
                properties={"campaign": "march-newsletter"},
                context={},
                timestamp=now - timedelta(days=2),
                received_at=now - timedelta(days=2),
            )
        )
    routed = route(contact)
    url = f"/api/v1/handoff/leads/{routed.id}/dossier"

    came = client.get(url, headers=auth(admin_key)).json()["how_they_came"]
    assert [(t["channel"], t["campaign"]) for t in came["touchpoints"]] == [
        ("organic_search", None),
        ("email", "march-newsletter"),
        ("paid_search", "spring-expo"),
    ]
    before = came["attribution"]
    assert (before["model"], before["from"], before["conversion"]) == (
        "linear",
        "touchpoints",
        None,
    )
    assert sorted((c["channel"], c["share"]) for c in before["credit"]) == [
        ("email", 0.3333),
        ("organic_search", 0.3333),
        ("paid_search", 0.3333),
    ]

    with session_scope() as session:
        record_conversion(session, contact, "won", 90_000, now, "deal-7")
    credits.catch_up()
    after = client.get(url, headers=auth(admin_key)).json()["how_they_came"]["attribution"]
    assert (after["from"], after["conversion"]["kind"]) == ("attribution", "won")
    assert sorted((c["channel"], c["campaign"], c["credit_fen"]) for c in after["credit"]) == [
        ("email", "march-newsletter", 30_000),
        ("organic_search", None, 30_000),
        ("paid_search", "spring-expo", 30_000),
    ]
