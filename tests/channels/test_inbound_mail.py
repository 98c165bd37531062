"""`nurture mail-in`: our own SMTP server for the List-Unsubscribe mailto address. A real mail
client's message to the mailbox unsubscribes the contact; other recipients are refused (no
open relay) and junk changes nothing."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from capture.models import Contact
from channels import inbound_mail
from core import db
from tests.channels.conftest import events_of, freeze, make_contact
from tests.channels.fakes import MailHandler
from tests.channels.test_email import create_template, send_email

MAILBOX = "unsubscribe@mail.example.cn"


@pytest.fixture
def mail_in() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = inbound_mail.start("127.0.0.1", port, MAILBOX)
    yield port
    controller.stop()


def mail(subject: str, body: str = "", to: str = MAILBOX) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Li Wei <li.wei@example.cn>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body or "sent from my phone")
    return message


def unsubscribed(contact_id: object) -> bool:
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        return contact.email_unsubscribed


def test_a_mail_to_the_mailbox_unsubscribes_over_real_smtp(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, mail_in: int
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    contact_id = make_contact()
    send_email(client, admin_key, contact_id, create_template(client, admin_key), "news:1")
    header = mailbox.messages[0].message["List-Unsubscribe"]
    mailto = urlsplit(re.findall(r"<(mailto:[^>]+)>", header)[0])
    [subject] = parse_qs(mailto.query)["subject"]

    with smtplib.SMTP("127.0.0.1", mail_in) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # not an open relay
            smtp.send_message(mail(subject, to="someone@else.example.com"))
        smtp.send_message(mail("hello", "just saying hi"))  # accepted, changes nothing
        assert not unsubscribed(contact_id)
        smtp.send_message(mail(subject))
    assert unsubscribed(contact_id)

    with smtplib.SMTP("127.0.0.1", mail_in) as smtp:  # a client sending it twice
        smtp.send_message(mail("", f"Please remove me.\n\n{subject}\n"))
    [event] = events_of(contact_id, "email_unsubscribed")
    assert event.properties["method"] == "mailto"


def test_a_mail_far_bigger_than_an_unsubscribe_request_is_refused(
    channels_env: None, mail_in: int
) -> None:
    too_big = mail("unsubscribe", "x" * (inbound_mail.MAX_MAIL_BYTES + 1))
    # Refused at MAIL FROM when the client honours the SIZE the server announced.
    refusals = (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)
    with smtplib.SMTP("127.0.0.1", mail_in) as smtp, pytest.raises(refusals) as refused:
        smtp.send_message(too_big)
    assert refused.value.smtp_code == 552
