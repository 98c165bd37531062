"""Channel test fixtures: settings pointed at local fake providers, Celery tasks run eagerly
(in the test process, after the transaction commits), and contacts to send to."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from capture.models import Contact, Event
from channels import settings as channel_settings
from channels.models import Delivery
from channels.providers import aliyun_sms, smtp
from core import db
from core.clock import clock
from tests.channels.fakes import (
    FakeDysms,
    FakeRobots,
    MailHandler,
    WebhookReceiver,
    start_smtp,
)
from tests.conftest import Backend, drain
from worker.app import celery_app

FEEDBACK_TOKEN = "feedback-test-token"
PUBLIC_URL = "https://nurture.example.com"


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[tuple[int, MailHandler]]:
    controller, handler = start_smtp()
    yield controller.port, handler
    controller.stop()


@pytest.fixture(scope="session")
def dysms() -> Iterator[FakeDysms]:
    fake = FakeDysms()
    yield fake
    fake.stop()


@pytest.fixture
def mailbox(channels_env: None, smtp_server: tuple[int, MailHandler]) -> MailHandler:
    return smtp_server[1]


@pytest.fixture
def channels_env(
    backend: Backend,
    smtp_server: tuple[int, MailHandler],
    dysms: FakeDysms,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    port, handler = smtp_server
    handler.reset()
    dysms.sent.clear()
    dysms.script.clear()
    dysms.rejected.clear()
    env = {
        "NURTURE_PUBLIC_URL": PUBLIC_URL,
        "NURTURE_SMTP_HOST": "127.0.0.1",
        "NURTURE_SMTP_PORT": str(port),
        "NURTURE_SMTP_FROM": "Acme Marketing <news@acme.example>",
        "NURTURE_ALIYUN_ACCESS_KEY_ID": dysms.access_key_id,
        "NURTURE_ALIYUN_ACCESS_KEY_SECRET": dysms.access_key_secret,
        "NURTURE_ALIYUN_SMS_ENDPOINT": dysms.endpoint,
        "NURTURE_ALIYUN_SMS_PROTOCOL": "http",
        "NURTURE_ALIYUN_SMS_SIGN_NAME": "Nurture",
        "NURTURE_ALIYUN_TIMEOUT_SECONDS": "3",
        "NURTURE_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from core import settings as core_settings

    core_settings.get_settings.cache_clear()
    channel_settings.get_channel_settings.cache_clear()
    smtp.reset_pool()
    aliyun_sms._client = None
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    monkeypatch.setitem(celery_app.conf, "task_eager_propagates", True)
    yield
    smtp.reset_pool()
    channel_settings.get_channel_settings.cache_clear()
    core_settings.get_settings.cache_clear()


@pytest.fixture
def robots() -> Iterator[FakeRobots]:
    fake = FakeRobots()
    yield fake
    fake.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    fake = WebhookReceiver()
    yield fake
    fake.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def delivery(delivery_id: str | uuid.UUID) -> Delivery:
    """The delivery as stored now, detached from any session."""
    with db.session_scope() as session:
        found = session.get(Delivery, uuid.UUID(str(delivery_id)))
        assert found is not None
        session.expunge(found)
        return found


def events_of(contact_id: uuid.UUID, name: str) -> list[Event]:
    """Runs ingest over what is queued, then returns the contact's events with this name."""
    drain()
    with db.session_scope() as session:
        rows = session.scalars(
            select(Event)
            .where(Event.contact_id == contact_id, Event.name == name)
            .order_by(Event.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def make_contact(**fields: Any) -> uuid.UUID:
    values: dict[str, Any] = {
        "email": "li.wei@example.cn",
        "phone": "+8613800138000",
        "is_known": True,
        "email_consent": "granted",
        "sms_consent": "granted",
        "timezone": "Asia/Shanghai",
        "traits": {"first_name": "Wei", "company": "Chongqing Machines"},
    }
    values.update(fields)
    with db.session_scope() as session:
        contact = Contact(**values)
        session.add(contact)
        session.flush()
        return contact.id


def freeze(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    clock.freeze(moment)
    return moment


def queue_emails(template_id: uuid.UUID, contact_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Queued emails of one template, one to each contact, without their tasks."""
    with db.session_scope() as session:
        rows = [
            Delivery(
                idempotency_key=f"batch:{index}",
                contact_id=contact_id,
                channel="email",
                template_id=template_id,
            )
            for index, contact_id in enumerate(contact_ids)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]
