"""The List-Unsubscribe mailto address: a mail to it, posted by the provider's inbound-mail
webhook, unsubscribes the contact its signed token names, once; other mail changes nothing."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient
from sqlalchemy import select

from capture.models import ConsentRecord, Contact
from core import db
from tests.channels.conftest import FEEDBACK_TOKEN, delivery, events_of, freeze, make_contact
from tests.channels.fakes import MailHandler
from tests.channels.test_email import create_template, send_email

HOOK = "/hooks/email/inbound"


def post_mail(client: TestClient, body: object, token: str = FEEDBACK_TOKEN) -> dict[str, object]:
    response = client.post(HOOK, json=body, headers={"X-Nurture-Token": token})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_mail_to_the_mailto_address_unsubscribes_the_contact(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    contact_id = make_contact()
    template_id = create_template(client, admin_key)
    send_email(client, admin_key, contact_id, template_id, "news:1")
    [mail] = mailbox.messages
    mailto = urlsplit(re.findall(r"<(mailto:[^>]+)>", mail.message["List-Unsubscribe"])[0])
    [subject] = parse_qs(mailto.query)["subject"]

    # Junk and forged tokens are accepted (so the provider does not retry) and change nothing.
    forged = subject[:-4] + ("0000" if not subject.endswith("0000") else "1111")
    for junk in ({"from": "x@example.cn", "subject": "hello"}, {"subject": forged}):
        assert post_mail(client, junk) == {"ok": True, "unsubscribed": False}
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None and not contact.email_unsubscribed

    refused = client.post(HOOK, json={"subject": subject}, headers={"X-Nurture-Token": "wrong"})
    assert refused.status_code == 401

    inbound = {"from": "Li Wei <li.wei@example.cn>", "to": mailto.path, "subject": subject}
    assert post_mail(client, inbound) == {"ok": True, "unsubscribed": True}
    assert post_mail(client, [inbound]) == {"ok": True, "unsubscribed": True}  # a repeat
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        assert contact.email_unsubscribed and contact.email_consent == "denied"
        proof = session.scalars(
            select(ConsentRecord).where(ConsentRecord.contact_id == contact_id)
        ).all()
        assert [(p.channel, p.granted) for p in proof] == [("email", False)]
    [event] = events_of(contact_id, "email_unsubscribed")
    assert event.properties["method"] == "mailto"

    later = send_email(client, admin_key, contact_id, template_id, "news:2")
    assert delivery(later["id"]).error_code == "unsubscribed"


def test_a_client_that_drops_the_subject_still_unsubscribes_by_the_body(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    contact_id = make_contact()
    send_email(client, admin_key, contact_id, create_template(client, admin_key), "news:1")
    header = mailbox.messages[0].message["List-Unsubscribe"]
    token = re.findall(r"subject=(unsubscribe-[^>]+)>", header)[0]
    assert post_mail(client, {"subject": "", "text": f"Please remove me.\n\n{token}\n"}) == {
        "ok": True,
        "unsubscribed": True,
    }
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None and contact.email_unsubscribed
