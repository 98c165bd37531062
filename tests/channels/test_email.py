"""Email end to end against a real SMTP server (aiosmtpd): templated mail with tracked links and
RFC 8058 unsubscribe, opens and clicks as events, bounces that suppress, pooled connections."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from capture.models import ConsentRecord, Contact
from channels import service, tasks
from channels.models import Delivery, Suppression, Template
from channels.providers import smtp
from core import db
from core.clock import clock
from tests.channels.conftest import (
    PUBLIC_URL,
    auth,
    delivery,
    events_of,
    freeze,
    make_contact,
    queue_emails,
)
from tests.channels.fakes import MailHandler

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
WELCOME_HTML = (
    "<html><body><h1>Hi {{ contact.first_name | default('there') }}</h1>"
    '<p>See <a href="https://acme.example/pricing?plan=pro">pricing</a> and '
    '<a href="https://acme.example/docs">docs</a>.</p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
)


def create_template(client: TestClient, admin_key: str, **fields: Any) -> str:
    body = {
        "name": "Welcome",
        "channel": "email",
        "subject": "Welcome to Acme, {{ contact.first_name | default('friend') }}",
        "html": WELCOME_HTML,
        **fields,
    }
    response = client.post("/api/v1/templates", json=body, headers=auth(admin_key))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def send_email(
    client: TestClient,
    admin_key: str,
    contact_id: uuid.UUID,
    template_id: str,
    key: str,
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "contact_id": str(contact_id),
        "channel": "email",
        "template_id": template_id,
        "idempotency_key": key,
        "campaign": "spring-launch",
        **extra,
    }
    response = client.post("/api/v1/deliveries", json=body, headers=auth(admin_key))
    assert response.status_code == 201, response.text
    return dict(response.json())


def path_of(url: str) -> str:
    assert url.startswith(PUBLIC_URL), url
    return url.removeprefix(PUBLIC_URL)


@pytest.fixture
def morning() -> None:
    freeze("2026-03-02T10:00:00+08:00")


def test_templated_email_arrives_with_tracking_and_one_click_unsubscribe(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    template_id = create_template(client, admin_key)
    sent = send_email(client, admin_key, contact_id, template_id, "welcome:1")

    assert len(mailbox.messages) == 1
    mail = mailbox.messages[0]
    assert mail.recipients == ["li.wei@example.cn"]
    message = mail.message
    assert message["Subject"] == "Welcome to Acme, Wei"
    assert message["From"] == "Acme Marketing <news@acme.example>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_url, mailto = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
    assert https_url.startswith(f"{PUBLIC_URL}/u/")
    assert mailto.startswith("mailto:unsubscribe@acme.example?subject=unsubscribe-")
    html = mail.part("html")
    assert "<h1>Hi Wei</h1>" in html
    assert "acme.example/pricing" not in html  # every link goes through the click tracker
    click_urls = re.findall(r'href="(https://nurture\.example\.com/t/c/[^"]+)"', html)
    assert len(click_urls) == 2
    assert f'href="{https_url}"' in html  # the unsubscribe link is not tracked
    pixel = re.search(r'<img src="([^"]+\.gif)"', html)
    assert pixel is not None
    assert "Hi Wei" in mail.part("plain")

    record = delivery(sent["id"])
    assert record.status == "sent"
    assert record.provider == "smtp"
    assert record.provider_message_id == message["Message-ID"]

    clock.advance(timedelta(minutes=3))
    opened = client.get(path_of(pixel.group(1)), headers={"User-Agent": CHROME})
    assert opened.status_code == 200
    assert opened.headers["content-type"] == "image/gif"

    clicked = client.get(
        path_of(click_urls[0]), headers={"User-Agent": CHROME}, follow_redirects=False
    )
    assert clicked.status_code == 302
    target = urlsplit(clicked.headers["location"])
    assert (target.scheme, target.netloc, target.path) == ("https", "acme.example", "/pricing")
    assert parse_qs(target.query) == {
        "plan": ["pro"],
        "utm_source": ["nurture"],
        "utm_medium": ["email"],
        "utm_campaign": ["spring-launch"],
    }
    record = delivery(sent["id"])
    assert record.status == "clicked"
    assert record.opened_at is not None and record.clicked_at is not None

    [opened_event] = events_of(contact_id, "email_opened")
    assert opened_event.properties["delivery_id"] == sent["id"]
    assert opened_event.properties["machine"] is False
    [clicked_event] = events_of(contact_id, "email_clicked")
    assert clicked_event.properties["url"].startswith("https://acme.example/pricing?plan=pro")
    assert clicked_event.properties["campaign"] == "spring-launch"
    assert events_of(contact_id, "email_sent")

    # RFC 8058: a bare POST with List-Unsubscribe=One-Click, no cookie, no login.
    confirm = client.get(path_of(https_url))
    assert confirm.status_code == 200 and '<form method="post"' in confirm.text
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None and not contact.email_unsubscribed  # GET changes nothing
    unsubscribed = client.post(
        path_of(https_url),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert unsubscribed.status_code == 200
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        assert contact.email_unsubscribed and contact.email_consent == "denied"
        proof = session.scalars(
            select(ConsentRecord).where(ConsentRecord.contact_id == contact_id)
        ).all()
        assert [(p.channel, p.granted) for p in proof] == [("email", False)]
    [event] = events_of(contact_id, "email_unsubscribed")
    assert event.properties["method"] == "one_click"

    # The next marketing email is stopped at send time, with the reason recorded.
    later = send_email(client, admin_key, contact_id, template_id, "welcome:2")
    assert delivery(later["id"]).status == "suppressed"
    assert delivery(later["id"]).error_code == "unsubscribed"
    assert len(mailbox.messages) == 1


def test_click_token_cannot_be_forged_or_pointed_elsewhere(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    send_email(client, admin_key, contact_id, create_template(client, admin_key), "k1")
    url = re.findall(
        r'href="(https://nurture\.example\.com/t/c/[^"]+)"', mailbox.messages[0].part("html")
    )[0]
    path = path_of(url)
    delivery_hex, position, signature = path.removeprefix("/t/c/").split(".")
    tampered = [
        f"/t/c/{delivery_hex}.1.{signature}",  # another link of the same mail
        f"/t/c/{delivery_hex}.{position}.{'0' * 64}",
        f"/t/c/{uuid.uuid4().hex}.{position}.{signature}",
        "/t/c/https%3A%2F%2Fevil.example",
        f"{path}?url=https://evil.example",
    ]
    for attempt in tampered[:-1]:
        answer = client.get(attempt, follow_redirects=False)
        assert answer.status_code == 404, attempt
    answer = client.get(tampered[-1], follow_redirects=False)
    assert answer.headers["location"].startswith("https://acme.example/pricing")


def test_machine_opens_and_clicks_are_flagged_not_counted(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    sent = send_email(client, admin_key, contact_id, create_template(client, admin_key), "k1")
    html = mailbox.messages[0].part("html")
    pixel = re.search(r'<img src="([^"]+\.gif)"', html)
    assert pixel is not None
    links = re.findall(r'href="(https://nurture\.example\.com/t/c/[^"]+)"', html)

    # A gateway scanning the message the moment it arrives: pixel and every link at once.
    client.get(path_of(pixel.group(1)), headers={"User-Agent": CHROME})
    for link in links:
        client.get(path_of(link), headers={"User-Agent": CHROME}, follow_redirects=False)
    # Apple Mail Privacy Protection's proxy and a HEAD probe later on.
    clock.advance(timedelta(hours=1))
    client.get(path_of(pixel.group(1)), headers={"User-Agent": "Mozilla/5.0"})
    client.head(path_of(links[1]), headers={"User-Agent": CHROME})

    record = delivery(sent["id"])
    assert record.status == "sent"
    assert record.opened_at is None and record.clicked_at is None
    opens = events_of(contact_id, "email_opened")
    assert [e.properties["machine"] for e in opens] == [True]
    clicks = events_of(contact_id, "email_clicked")
    assert clicks and all(e.properties["machine"] for e in clicks)

    # A person clicking later counts.
    clock.advance(timedelta(minutes=5))
    client.get(path_of(links[1]), headers={"User-Agent": CHROME}, follow_redirects=False)
    assert delivery(sent["id"]).status == "clicked"
    human = [e for e in events_of(contact_id, "email_clicked") if not e.properties["machine"]]
    assert len(human) == 1


def test_hard_bounce_suppresses_the_address(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    mailbox.rejections["gone@example.cn"] = (
        "550 5.1.1 <gone@example.cn>: Recipient address rejected: User unknown"
    )
    contact_id = make_contact(email="gone@example.cn")
    template_id = create_template(client, admin_key)
    first = send_email(client, admin_key, contact_id, template_id, "k1")

    record = delivery(first["id"])
    assert record.status == "bounced"
    assert record.error_code == "550"
    assert "5.1.1" in (record.error_reason or "")
    with db.session_scope() as session:
        suppression = session.scalar(
            select(Suppression).where(Suppression.address == "gone@example.cn")
        )
        assert suppression is not None and suppression.reason == "hard_bounce"
    [bounced] = events_of(contact_id, "email_bounced")
    assert bounced.properties["bounce_type"] == "hard"

    # Not even a transactional email goes to a hard-bounced address.
    again = send_email(client, admin_key, contact_id, template_id, "k2", transactional=True)
    assert delivery(again["id"]).status == "suppressed"
    assert delivery(again["id"]).error_code == "suppressed_hard_bounce"
    assert mailbox.messages == []


def test_soft_bounce_retries_with_backoff_then_suppresses(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    mailbox.rejections["full@example.cn"] = "452 4.2.2 Mailbox full"
    contact_id = make_contact(email="full@example.cn")
    sent = send_email(client, admin_key, contact_id, create_template(client, admin_key), "k1")

    waits = []
    for _ in range(3):
        record = delivery(sent["id"])
        assert record.status == "deferred" and record.error_code == "452"
        assert record.next_attempt_at is not None
        waits.append(record.next_attempt_at - clock.now())
        # Nothing happens before the wait is over...
        with db.session_scope() as session:
            assert tasks.claim_due(session) == []
        clock.freeze(record.next_attempt_at)
        # ...then the periodic task picks it up again.
        tasks.resume_due()
    assert waits[0] < waits[1] < waits[2]  # exponential backoff
    record = delivery(sent["id"])
    assert record.status == "bounced" and record.attempts == 4
    with db.session_scope() as session:
        suppression = session.scalar(
            select(Suppression).where(Suppression.address == "full@example.cn")
        )
        assert suppression is not None and suppression.reason == "soft_bounce_limit"


def test_same_key_and_a_task_run_twice_send_once(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    template_id = create_template(client, admin_key)
    first = send_email(client, admin_key, contact_id, template_id, "journey:1:node:3:attempt:1")
    second = send_email(client, admin_key, contact_id, template_id, "journey:1:node:3:attempt:1")
    assert first["id"] == second["id"]
    assert len(mailbox.messages) == 1

    assert tasks.send_delivery(first["id"]) == "sent"
    assert tasks.send_delivery(first["id"]) == "sent"
    assert len(mailbox.messages) == 1


def test_concurrent_runs_of_one_delivery_send_once(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    template_id = uuid.UUID(create_template(client, admin_key))
    with db.session_scope() as session:
        row = Delivery(
            idempotency_key="race", contact_id=contact_id, channel="email", template_id=template_id
        )
        session.add(row)
        session.flush()
        delivery_id = str(row.id)
    results: list[str] = []
    runners = [
        threading.Thread(target=lambda: results.append(tasks.send_delivery(delivery_id)))
        for _ in range(4)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    # One run sends; the others find it sent, or still "sending" (claimed by that run).
    assert "sent" in results and set(results) <= {"sent", "sending"}
    assert delivery(delivery_id).status == "sent"
    assert len(mailbox.messages) == 1


def test_marketing_email_in_quiet_hours_is_deferred_to_the_morning(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str
) -> None:
    freeze("2026-03-02T23:30:00+08:00")
    contact_id = make_contact()
    template_id = create_template(client, admin_key)
    sent = send_email(client, admin_key, contact_id, template_id, "k1")
    record = delivery(sent["id"])
    assert record.status == "deferred" and record.error_code == "quiet_hours"
    assert record.next_attempt_at == freeze("2026-03-03T08:00:00+08:00")
    assert mailbox.messages == []

    receipt = send_email(client, admin_key, contact_id, template_id, "k2", transactional=True)
    assert delivery(receipt["id"]).status == "sent"  # transactional mail ignores quiet hours

    tasks.resume_due()
    assert delivery(sent["id"]).status == "sent"
    assert len(mailbox.messages) == 2


def test_consent_and_frequency_caps_apply_at_send_time(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    template_id = create_template(client, admin_key)
    unknown = make_contact(email="unknown@example.cn", email_consent="unknown")
    stopped = send_email(client, admin_key, unknown, template_id, "u1")
    assert (delivery(stopped["id"]).status, delivery(stopped["id"]).error_code) == (
        "suppressed",
        "no_consent",
    )

    contact_id = make_contact()
    statuses = [
        delivery(send_email(client, admin_key, contact_id, template_id, f"c{i}")["id"]).status
        for i in range(4)
    ]
    assert statuses == ["sent", "sent", "sent", "deferred"]  # default cap: 3 a day
    capped = delivery(send_email(client, admin_key, contact_id, template_id, "c5")["id"])
    assert capped.error_code == "frequency_cap_daily"
    assert capped.next_attempt_at == freeze("2026-03-03T00:00:00+08:00")


def test_pooled_connection_is_reused_capped_and_reconnected(
    channels_env: None,
    mailbox: MailHandler,
    client: TestClient,
    admin_key: str,
    morning: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from channels.settings import get_channel_settings

    monkeypatch.setenv("NURTURE_SMTP_MESSAGES_PER_CONNECTION", "3")
    monkeypatch.setenv("NURTURE_EMAIL_DAILY_CAP", "100")
    monkeypatch.setenv("NURTURE_EMAIL_WEEKLY_CAP", "100")
    get_channel_settings.cache_clear()
    template_id = create_template(client, admin_key)
    contact_id = make_contact()
    before = mailbox.connections
    for i in range(3):
        send_email(client, admin_key, contact_id, template_id, f"a{i}")
    assert mailbox.connections - before == 1
    send_email(client, admin_key, contact_id, template_id, "a3")
    assert mailbox.connections - before == 2  # the fourth message opened a fresh connection

    # The server dropping an idle connection: the next send reconnects and succeeds.
    pool = smtp.get_connection(get_channel_settings())
    assert pool._smtp is not None and pool._smtp.sock is not None
    pool._smtp.sock.close()
    sent = send_email(client, admin_key, contact_id, template_id, "a4")
    assert delivery(sent["id"]).status == "sent"
    assert len(mailbox.messages) == 5


def test_preference_page_changes_consent_per_channel(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    send_email(client, admin_key, contact_id, create_template(client, admin_key), "k1")
    https_url = re.findall(r"<([^>]+)>", mailbox.messages[0].message["List-Unsubscribe"])[0]
    page = client.get(path_of(https_url) + "/preferences")
    assert page.status_code == 200
    assert 'name="email" value="yes" checked' in page.text
    saved = client.post(path_of(https_url) + "/preferences", data={"email": "yes"})
    assert saved.status_code == 200 and "saved" in saved.text
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        assert not contact.email_unsubscribed and contact.sms_unsubscribed
        assert contact.sms_consent == "denied"
    assert events_of(contact_id, "sms_unsubscribed")
    assert client.get("/u/not-a-token/preferences").status_code == 404


def test_bounce_and_complaint_webhook(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    sent = send_email(client, admin_key, contact_id, create_template(client, admin_key), "k1")
    message_id = mailbox.messages[0].message["Message-ID"]
    report = {
        "type": "bounce",
        "email": "li.wei@example.cn",
        "bounce_type": "hard",
        "message_id": message_id,
        "code": "5.1.1",
        "reason": "user unknown",
    }
    assert client.post("/hooks/email/feedback", json=report).status_code == 401
    answer = client.post("/hooks/email/feedback?token=feedback-test-token", json=[report, report])
    assert answer.status_code == 200
    assert delivery(sent["id"]).status == "bounced"
    assert len(events_of(contact_id, "email_bounced")) == 1

    other = make_contact(email="angry@example.cn")
    complaint = {"type": "complaint", "email": "Angry@Example.cn"}
    answer = client.post(
        "/hooks/email/feedback", json=complaint, headers={"X-Nurture-Token": "feedback-test-token"}
    )
    assert answer.status_code == 200
    with db.session_scope() as session:
        assert (
            session.scalar(
                select(Suppression.reason).where(Suppression.address == "angry@example.cn")
            )
            == "complaint"
        )
        contact = session.get(Contact, other)
        assert contact is not None and contact.email_unsubscribed
    bad = client.post(
        "/hooks/email/feedback?token=feedback-test-token", json={"type": "bounce", "email": "x"}
    )
    assert bad.status_code == 422 and "email" in bad.json()["error"]["fields"]


def test_send_is_refused_with_clear_errors(
    channels_env: None, client: TestClient, admin_key: str, morning: None
) -> None:
    contact_id = make_contact()
    template_id = create_template(client, admin_key)
    cases = [
        ({"template_id": None}, "template_id"),
        ({"template_id": str(uuid.uuid4())}, "template_id"),
        ({"contact_id": str(uuid.uuid4())}, "contact_id"),
        ({"channel": "sms"}, "template_id"),
        ({"channel": "fax"}, "channel"),
        ({"channel": "webhook", "template_id": None}, "target.endpoint_id"),
    ]
    for change, field in cases:
        body = {
            "contact_id": str(contact_id),
            "channel": "email",
            "template_id": template_id,
            "idempotency_key": "bad",
            **change,
        }
        answer = client.post("/api/v1/deliveries", json=body, headers=auth(admin_key))
        assert answer.status_code == 422, (change, answer.text)
        assert field in answer.json()["error"]["fields"], (change, answer.json())
    with db.session_scope() as session:
        assert session.scalars(select(Delivery)).all() == []
    assert client.post("/api/v1/deliveries", json={}).status_code == 401


def test_template_api_refuses_injection_and_previews_safely(
    channels_env: None, client: TestClient, admin_key: str
) -> None:
    evil = {
        "name": "Evil",
        "channel": "email",
        "subject": "Hi",
        "html": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    }
    answer = client.post("/api/v1/templates", json=evil, headers=auth(admin_key))
    assert answer.status_code == 422
    assert "html" in answer.json()["error"]["fields"]
    with db.session_scope() as session:
        assert session.scalars(select(Template)).all() == []

    template_id = create_template(client, admin_key)
    preview = client.post(
        f"/api/v1/templates/{template_id}/preview",
        json={"sample": {"contact": {"traits": {"first_name": "<img src=x onerror=alert(1)>"}}}},
        headers=auth(admin_key),
    )
    assert preview.status_code == 200
    body = preview.json()
    assert "&lt;img src=x onerror=alert(1)&gt;" in body["html"]
    assert body["subject"] == "Welcome to Acme, <img src=x onerror=alert(1)>"

    contact_id = make_contact()
    with db.session_scope() as session:
        assert service.get_template(session, uuid.UUID(template_id)).channel == "email"
    by_contact = client.post(
        f"/api/v1/templates/{template_id}/preview",
        json={"contact_id": str(contact_id)},
        headers=auth(admin_key),
    )
    assert "<h1>Hi Wei</h1>" in by_contact.json()["html"]


def test_test_send_goes_to_any_address_untracked(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str
) -> None:
    template_id = create_template(client, admin_key)
    answer = client.post(
        f"/api/v1/templates/{template_id}/test-send",
        json={
            "to": "Marketer@Acme.example",
            "sample": {"contact": {"traits": {"first_name": "Ann"}}},
        },
        headers=auth(admin_key),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["sent"] is True
    [mail] = mailbox.messages
    assert mail.recipients == ["marketer@acme.example"]
    assert mail.message["Subject"] == "[Test] Welcome to Acme, Ann"
    assert "https://acme.example/pricing?plan=pro" in mail.part("html")
    with db.session_scope() as session:
        assert session.scalars(select(Delivery)).all() == []


def test_queued_deliveries_of_a_channel_go_out_together_with_policies_applied(
    channels_env: None,
    mailbox: MailHandler,
    client: TestClient,
    admin_key: str,
    morning: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from channels.settings import get_channel_settings

    monkeypatch.setenv("NURTURE_SEND_BATCH_SIZE", "25")
    get_channel_settings.cache_clear()
    template_id = uuid.UUID(create_template(client, admin_key))
    same = make_contact()
    others = [make_contact(email=f"reader{i}@example.cn") for i in range(3)]
    ids = [str(i) for i in queue_emails(template_id, [same] * 4 + others)]
    assert tasks.send_delivery(ids[0]) == "sent"
    statuses = [delivery(i).status for i in ids]
    # One run sent every queued email; the fourth to the same contact met the daily cap.
    assert statuses == ["sent", "sent", "sent", "deferred", "sent", "sent", "sent"]
    assert delivery(ids[3]).error_code == "frequency_cap_daily"
    assert len(mailbox.messages) == 6
    assert [tasks.send_delivery(i) for i in ids[1:3]] == ["sent", "sent"]
    assert len(mailbox.messages) == 6


def test_a_queued_delivery_whose_task_was_lost_is_sent_by_the_periodic_task(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    template_id = uuid.UUID(create_template(client, admin_key))
    contact_id = make_contact()
    with db.session_scope() as session:
        row = Delivery(
            idempotency_key="lost", contact_id=contact_id, channel="email", template_id=template_id
        )
        session.add(row)
        session.flush()
        delivery_id = row.id
    assert tasks.resume_due() == 0  # just queued: its task may still be on its way
    clock.advance(tasks.STALE_QUEUED + timedelta(seconds=1))
    assert tasks.resume_due() == 1
    assert delivery(delivery_id).status == "sent"
    assert len(mailbox.messages) == 1


def test_a_merged_contact_is_sent_to_as_the_contact_it_joined(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    survivor = make_contact(email="kept@example.cn")
    merged = make_contact(email="old@example.cn", merged_into_id=survivor)
    sent = send_email(client, admin_key, merged, create_template(client, admin_key), "k1")
    assert sent["contact_id"] == str(survivor)
    assert mailbox.messages[0].recipients == ["kept@example.cn"]


def test_smtp_login_and_a_refused_login_pauses_email(
    channels_env: None,
    client: TestClient,
    admin_key: str,
    morning: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from channels.settings import get_channel_settings
    from tests.channels.fakes import free_port

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"mailer",
            b"s3cret",
        )
        return AuthResult(success=ok, handled=False)

    handler = MailHandler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        monkeypatch.setenv("NURTURE_SMTP_PORT", str(controller.port))
        monkeypatch.setenv("NURTURE_SMTP_USER", "mailer")
        monkeypatch.setenv("NURTURE_SMTP_PASSWORD", "s3cret")
        get_channel_settings.cache_clear()
        template_id = create_template(client, admin_key)
        good = send_email(client, admin_key, make_contact(), template_id, "k1")
        assert delivery(good["id"]).status == "sent"
        assert len(handler.messages) == 1

        monkeypatch.setenv("NURTURE_SMTP_PASSWORD", "wrong")
        get_channel_settings.cache_clear()
        refused = send_email(
            client, admin_key, make_contact(email="b@example.cn"), template_id, "k2"
        )
        assert (delivery(refused["id"]).status, delivery(refused["id"]).error_code) == (
            "deferred",
            "smtp_auth",
        )
        health = client.get("/api/v1/channels/health", headers=auth(admin_key)).json()
        email = next(c for c in health["channels"] if c["channel"] == "email")
        assert email["paused"] and email["pause_code"] == "smtp_auth"
    finally:
        controller.stop()
