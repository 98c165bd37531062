"""Outgoing webhooks (signed, retried, dead-lettered, replayed, fed by event subscriptions) and
WeCom/DingTalk robots (signed, 20 a minute, queued and coalesced) against local fake servers."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from channels import sending, service, tasks
from channels.models import ChannelAlert, Delivery, SendClaim
from channels.settings import get_channel_settings
from core import db, feed
from core.clock import clock
from tests.channels.conftest import auth, delivery, freeze, make_contact
from tests.channels.fakes import FakeRobots, WebhookReceiver
from tests.conftest import drain


def create_endpoint(
    client: TestClient, admin_key: str, url: str, events: list[str]
) -> dict[str, Any]:
    answer = client.post(
        "/api/v1/webhook-endpoints",
        json={"name": "CRM", "url": url, "events": events},
        headers=auth(admin_key),
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def send(channel: str, key: str, contact_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    with db.session_scope() as session:
        created = service.send(
            session, contact_id=contact_id, channel=channel, idempotency_key=key, **fields
        )
        return created.id


@pytest.fixture
def now() -> None:
    freeze("2026-03-02T10:00:00+08:00")


def test_webhook_is_signed_and_carries_the_contact(
    channels_env: None, receiver: WebhookReceiver, client: TestClient, admin_key: str, now: None
) -> None:
    endpoint = create_endpoint(client, admin_key, receiver.url, [])
    receiver.secrets.append(endpoint["secret"])
    listed = client.get("/api/v1/webhook-endpoints", headers=auth(admin_key)).json()
    assert "secret" not in listed[0]
    contact_id = make_contact()
    journey_id = uuid.uuid4()
    delivery_id = send(
        "webhook",
        "j:1",
        contact_id,
        target={"endpoint_id": endpoint["id"]},
        context={"type": "journey.action", "note": "qualified"},
        journey_id=journey_id,
    )
    assert receiver.bad_signatures == 0
    [body] = receiver.received
    assert body["type"] == "journey.action"
    assert body["contact"]["email"] == "li.wei@example.cn"
    assert body["journey_id"] == str(journey_id)
    assert body["data"] == {"type": "journey.action", "note": "qualified"}
    assert delivery(delivery_id).status == "sent"


def test_a_receiver_with_another_secret_refuses_and_it_is_retried(
    channels_env: None, receiver: WebhookReceiver, client: TestClient, admin_key: str, now: None
) -> None:
    endpoint = create_endpoint(client, admin_key, receiver.url, [])
    receiver.secrets.append("whsec_someone_else")
    delivery_id = send("webhook", "k", make_contact(), target={"endpoint_id": endpoint["id"]})
    assert receiver.bad_signatures == 1
    record = delivery(delivery_id)
    assert (record.status, record.error_code) == ("deferred", "http_401")


def test_failures_are_retried_with_backoff_then_dead_lettered_and_replayed(
    channels_env: None, receiver: WebhookReceiver, client: TestClient, admin_key: str, now: None
) -> None:
    endpoint = create_endpoint(client, admin_key, receiver.url, [])
    receiver.secrets.append(endpoint["secret"])
    attempts = get_channel_settings().webhook_max_attempts
    receiver.statuses = [500] * attempts
    delivery_id = send("webhook", "k", make_contact(), target={"endpoint_id": endpoint["id"]})
    waits = []
    for _ in range(attempts - 1):
        record = delivery(delivery_id)
        assert record.status == "deferred" and record.next_attempt_at is not None
        waits.append(record.next_attempt_at - clock.now())
        clock.freeze(record.next_attempt_at)
        tasks.resume_due()
    assert waits == sorted(waits) and waits[-1] > waits[0] * 8
    record = delivery(delivery_id)
    assert (record.status, record.attempts, record.error_code) == ("failed", attempts, "http_500")

    dead = client.get("/api/v1/dead-letters", headers=auth(admin_key)).json()
    assert [d["delivery_id"] for d in dead] == [str(delivery_id)]
    with db.session_scope() as session:
        assert session.scalars(select(ChannelAlert.code)).all() == ["dead_letter"]

    replayed = client.post(f"/api/v1/dead-letters/{dead[0]['id']}/replay", headers=auth(admin_key))
    assert replayed.status_code == 200
    assert delivery(delivery_id).status == "sent"
    assert len(receiver.received) == 1
    again = client.post(f"/api/v1/dead-letters/{dead[0]['id']}/replay", headers=auth(admin_key))
    assert again.status_code == 409
    assert client.get("/api/v1/dead-letters", headers=auth(admin_key)).json() == []


def test_subscribed_events_become_webhooks_once(
    channels_env: None,
    receiver: WebhookReceiver,
    client: TestClient,
    admin_key: str,
    write_key: str,
    now: None,
) -> None:
    endpoint = create_endpoint(client, admin_key, receiver.url, ["Demo Requested"])
    receiver.secrets.append(endpoint["secret"])
    for name in ("Demo Requested", "Page Scrolled"):
        answer = client.post(
            "/v1/track",
            json={"userId": "u-42", "event": name, "properties": {"plan": "pro"}},
            auth=(write_key, ""),
        )
        assert answer.status_code == 200
    drain()
    for _ in range(2):  # a second dispatch finds nothing new
        with db.session_scope() as session:
            feed.dispatch(session)
    [body] = receiver.received
    assert body["type"] == "event.track"
    assert body["data"]["event"]["name"] == "Demo Requested"
    assert body["data"]["event"]["properties"] == {"plan": "pro"}
    with db.session_scope() as session:
        assert len(session.scalars(select(Delivery)).all()) == 1


def create_robot(client: TestClient, admin_key: str, **body: Any) -> str:
    answer = client.post("/api/v1/robots", json=body, headers=auth(admin_key))
    assert answer.status_code == 201, answer.text
    assert "webhook_url" not in answer.json() and "secret" not in answer.json()
    return str(answer.json()["id"])


def sales_robot(client: TestClient, admin_key: str, robots: FakeRobots) -> str:
    return create_robot(client, admin_key, name="Sales", kind="wecom", webhook_url=robots.wecom_url)


def test_wecom_and_dingtalk_robots_post_markdown(
    channels_env: None, robots: FakeRobots, client: TestClient, admin_key: str, now: None
) -> None:
    wecom = create_robot(
        client, admin_key, name="Sales East", kind="wecom", webhook_url=robots.wecom_url
    )
    dingtalk = create_robot(
        client,
        admin_key,
        name="Sales West",
        kind="dingtalk",
        webhook_url=robots.dingtalk_url,
        secret=robots.dingtalk_secret,
    )
    template = client.post(
        "/api/v1/templates",
        json={
            "name": "Hot lead",
            "channel": "dingtalk",
            "subject": "Hot lead: {{ contact.first_name }}",
            "body": "### {{ contact.first_name }} at {{ contact.company }}\n[Dossier]({{ link }})",
        },
        headers=auth(admin_key),
    )
    assert template.status_code == 201, template.text
    contact_id = make_contact()
    first = send(
        "wecom",
        "n1",
        contact_id,
        target={"robot_id": wecom},
        context={"markdown": "**New MQL**: Wei"},
    )
    second = send(
        "dingtalk",
        "n2",
        contact_id,
        target={"robot_id": dingtalk},
        template_id=uuid.UUID(template.json()["id"]),
        context={"link": "https://nurture.example.com/leads/1"},
    )
    assert robots.errors == []
    assert robots.posts[0] == (
        "wecom",
        {"msgtype": "markdown", "markdown": {"content": "**New MQL**: Wei"}},
    )
    kind, body = robots.posts[1]
    assert kind == "dingtalk"
    assert body["markdown"] == {
        "title": "Hot lead: Wei",
        "text": "### Wei at Chongqing Machines\n[Dossier](https://nurture.example.com/leads/1)",
    }
    assert delivery(first).status == "sent" and delivery(second).status == "sent"


def test_dingtalk_with_a_wrong_secret_fails_with_the_reason(
    channels_env: None, robots: FakeRobots, client: TestClient, admin_key: str, now: None
) -> None:
    robot = create_robot(
        client,
        admin_key,
        name="Bad",
        kind="dingtalk",
        webhook_url=robots.dingtalk_url,
        secret="SECwrong",
    )
    sent = send("dingtalk", "n", make_contact(), target={"robot_id": robot}, context={"text": "x"})
    record = delivery(sent)
    assert (record.status, record.error_code) == ("failed", "310000")
    assert robots.posts == []
    answer = client.post(
        "/api/v1/robots",
        json={"name": "x", "kind": "dingtalk", "webhook_url": robots.dingtalk_url},
        headers=auth(admin_key),
    )
    assert answer.status_code == 422 and "secret" in answer.json()["error"]["fields"]


def test_robot_messages_over_20_a_minute_wait_and_are_coalesced(
    channels_env: None, robots: FakeRobots, client: TestClient, admin_key: str, now: None
) -> None:
    robot = sales_robot(client, admin_key, robots)
    contact_id = make_contact()
    ids = [
        send(
            "wecom", f"n{i}", contact_id, target={"robot_id": robot}, context={"text": f"lead {i}"}
        )
        for i in range(26)
    ]
    assert len(robots.posts) == 20
    assert robots.errors == []  # we held back instead of hitting the robot's limit
    waiting = [delivery(i) for i in ids[20:]]
    assert {(d.status, d.error_code) for d in waiting} == {("deferred", "robot_rate_limit")}
    assert waiting[0].next_attempt_at == clock.now() + timedelta(minutes=1)

    clock.advance(timedelta(minutes=1))
    assert tasks.resume_due() == 6
    assert len(robots.posts) == 21
    content = robots.posts[-1][1]["markdown"]["content"]
    assert [f"lead {i}" in content for i in range(20, 26)] == [True] * 6
    assert {delivery(i).status for i in ids} == {"sent"}


def test_a_robot_post_left_by_a_stopped_worker_is_not_posted_again(
    channels_env: None, robots: FakeRobots, client: TestClient, admin_key: str, now: None
) -> None:
    robot = sales_robot(client, admin_key, robots)
    contact_id = make_contact()
    posted = send("wecom", "n1", contact_id, target={"robot_id": robot}, context={"text": "a"})
    assert delivery(posted).status == "sent" and len(robots.posts) == 1
    with db.session_scope() as session:
        assert session.scalars(select(SendClaim)).all() == []  # recorded, ledger released
        # As a worker killed during the post leaves it: claimed, committed, no answer.
        stopped = Delivery(
            idempotency_key="n2",
            contact_id=contact_id,
            channel="wecom",
            status="sending",
            to_address=robot,
            target={"robot_id": robot},
            context={"text": "b"},
            sending_at=clock.now(),
        )
        session.add(stopped)
        session.flush()
        session.add(SendClaim(delivery_id=stopped.id, claimed_at=clock.now()))

    # Within the lease nothing is touched: the worker may still be posting.
    assert tasks.send_delivery(str(stopped.id)) == "sending"
    clock.advance(sending.SENDING_LEASE + timedelta(seconds=1))
    assert tasks.resume_due() == 0
    record = delivery(stopped.id)
    assert (record.status, record.error_code) == ("failed", "ambiguous_send")
    assert len(robots.posts) == 1
