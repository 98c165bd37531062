"""Sending to an explicit address that is not a contact (e.g. a sales rep): the same idempotency,
rendering, tracking and delivery records as a send to a contact, with the address policies."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.errors import ApiError
from capture.models import Event
from channels import service, tasks
from channels.models import Delivery, DeliveryEvent, Suppression
from core import db
from tests.channels.conftest import delivery, freeze
from tests.channels.fakes import FakeDysms, MailHandler
from tests.channels.test_email import CHROME, create_template, path_of
from tests.channels.test_sms import create_sms_template

REP_HTML = (
    "<p>Hi {{ rep.name }}, {{ lead.company }} is yours.</p>"
    '<p><a href="https://crm.acme.example/leads/{{ lead.id }}">Open the lead</a></p>'
)


def send_to_rep(template_id: str, key: str, to: str = "Zhang.Min@Acme.example") -> Delivery:
    with db.session_scope() as session:
        sent = service.send_to_address(
            session,
            channel="email",
            to=to,
            template_id=uuid.UUID(template_id),
            idempotency_key=key,
            context={"rep": {"name": "Zhang Min"}, "lead": {"id": "L-7", "company": "Chongqing"}},
        )
        session.expunge(sent)
        return sent


def test_email_to_an_address_is_rendered_tracked_and_recorded_once(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str
) -> None:
    # 23:30 local time is in marketing quiet hours: an operational message to a rep still goes.
    freeze("2026-03-02T23:30:00+08:00")
    template_id = create_template(
        client, admin_key, subject="New lead: {{ lead.company }}", html=REP_HTML
    )
    sent = send_to_rep(template_id, "handoff:assigned:L-7:1")

    [mail] = mailbox.messages
    assert mail.recipients == ["zhang.min@acme.example"]
    assert mail.message["Subject"] == "New lead: Chongqing"
    assert mail.message["List-Unsubscribe"] is None  # operational, not marketing
    html = mail.part("html")
    assert "Hi Zhang Min, Chongqing is yours." in html
    [click_url] = re.findall(r'href="(https://nurture\.example\.com/t/c/[^"]+)"', html)

    record = delivery(sent.id)
    assert record.contact_id is None and record.transactional
    assert (record.status, record.to_address) == ("sent", "zhang.min@acme.example")
    assert record.provider_message_id == mail.message["Message-ID"]

    # The same key sends nothing more, whether through the service or the task again.
    again = send_to_rep(template_id, "handoff:assigned:L-7:1")
    assert again.id == sent.id
    assert tasks.send_delivery(str(sent.id)) == "sent"
    assert len(mailbox.messages) == 1

    freeze("2026-03-02T23:35:00+08:00")
    clicked = client.get(path_of(click_url), headers={"User-Agent": CHROME}, follow_redirects=False)
    assert clicked.status_code == 302
    assert clicked.headers["location"].startswith("https://crm.acme.example/leads/L-7?")
    assert delivery(sent.id).status == "clicked"
    with db.session_scope() as session:
        kinds = session.scalars(
            select(DeliveryEvent.kind).where(DeliveryEvent.delivery_id == sent.id)
        ).all()
        assert kinds == ["click"]
        # No contact's timeline gets the rep's message or click.
        assert session.scalar(select(Event.id).where(Event.name.like("email_%"))) is None


def test_a_suppressed_or_invalid_address_is_not_sent_to(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    template_id = create_template(client, admin_key, html=REP_HTML)
    with db.session_scope() as session:
        session.add(Suppression(channel="email", address="gone@acme.example", reason="hard_bounce"))
    stopped = send_to_rep(template_id, "rep:1", to="gone@acme.example")
    assert delivery(stopped.id).status == "suppressed"
    assert delivery(stopped.id).error_code == "suppressed_hard_bounce"

    for key, channel, to, field in (
        ("rep:2", "email", "not an address", "to"),
        ("rep:3", "wecom", "zhang.min@acme.example", "channel"),
    ):
        with db.session_scope() as session, pytest.raises(ApiError) as refused:
            service.send_to_address(
                session,
                channel=channel,
                to=to,
                template_id=uuid.UUID(template_id),
                idempotency_key=key,
            )
        assert refused.value.status == 422 and field in (refused.value.fields or {})
    with db.session_scope() as session:
        keys = session.scalars(select(Delivery.idempotency_key)).all()
        assert keys == ["rep:1"]
    assert mailbox.messages == []


def test_sms_to_a_phone_number_that_is_not_a_contact(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str
) -> None:
    freeze("2026-03-02T21:30:00+08:00")  # after marketing hours: an operational SMS still goes
    template_id = create_sms_template(
        client,
        admin_key,
        purpose="transactional",
        body="${name}，您有新线索，请查看。",
        params={"name": "{{ rep }}"},
    )
    with db.session_scope() as session:
        sent = service.send_to_address(
            session,
            channel="sms",
            to="+86 138 0013 8001",
            template_id=uuid.UUID(template_id),
            idempotency_key="handoff:sms:L-7",
            context={"rep": "张敏"},
        )
        delivery_id = sent.id
    [message] = dysms.sent
    assert (message.phone, message.params) == (
        "13800138001",
        {"name": "张敏"},
    )
    record = delivery(delivery_id)
    assert (record.status, record.contact_id, record.to_address) == (
        "sent",
        None,
        "+8613800138001",
    )
