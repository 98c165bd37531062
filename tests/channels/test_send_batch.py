"""A batch of emails through the claim-before-send ledger: outcomes recorded together at the end
of the run, and what a stopped run leaves behind resolved from its ledger rows, never by a blind
resend."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from channels import claims, tasks
from channels.models import Delivery, SendClaim, Suppression
from channels.sending import SENDING_LEASE
from channels.settings import get_channel_settings
from core import db
from core.clock import clock
from tests.channels.conftest import delivery, events_of, freeze, make_contact, queue_emails
from tests.channels.fakes import MailHandler
from tests.channels.test_email import create_template
from tests.conftest import Backend

READERS = 5
BOUNCING = 2


@pytest.fixture
def morning() -> None:
    freeze("2026-03-02T10:00:00+08:00")


@pytest.fixture
def default_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NURTURE_SEND_BATCH_SIZE", raising=False)
    get_channel_settings.cache_clear()


def ledger_rows() -> list[uuid.UUID]:
    with db.session_scope() as session:
        return list(session.scalars(select(SendClaim.delivery_id)))


def test_a_hard_bounce_mid_batch_is_suppressed_and_the_others_recorded_sent(
    channels_env: None,
    mailbox: MailHandler,
    client: TestClient,
    admin_key: str,
    morning: None,
    default_batching: None,
) -> None:
    template_id = uuid.UUID(create_template(client, admin_key))
    contacts = [make_contact(email=f"reader{i}@example.cn") for i in range(READERS)]
    mailbox.rejections[f"reader{BOUNCING}@example.cn"] = "550 5.1.1 User unknown"
    ids = queue_emails(template_id, contacts)

    assert tasks.send_delivery(str(ids[0])) == "sent"

    records = [delivery(i) for i in ids]
    assert [r.status for r in records] == ["sent", "sent", "bounced", "sent", "sent"]
    assert all(r.sending_at is not None and r.attempts == 1 for r in records)
    assert all(r.provider_message_id for i, r in enumerate(records) if i != BOUNCING)
    assert sorted(m.recipients[0] for m in mailbox.messages) == sorted(
        f"reader{i}@example.cn" for i in range(READERS) if i != BOUNCING
    )
    with db.session_scope() as session:
        suppressed = session.scalars(select(Suppression.address)).all()
    assert suppressed == [f"reader{BOUNCING}@example.cn"]
    assert ledger_rows() == []
    assert [len(events_of(c, "email_sent")) for c in contacts] == [1, 1, 0, 1, 1]
    assert len(events_of(contacts[BOUNCING], "email_bounced")) == 1


def test_a_run_stopped_between_claims_and_record_is_recovered_from_its_ledger(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, morning: None
) -> None:
    template_id = uuid.UUID(create_template(client, admin_key))
    contacts = [make_contact(email=f"reader{i}@example.cn") for i in range(5)]
    sent, bounced, in_flight, reserved, unledgered = queue_emails(template_id, contacts)
    claimed_at = clock.now()
    with db.session_scope() as session:
        # As a worker killed after its sends, before recording the batch, leaves it: two
        # answers noted, one claimed without an answer, one never claimed; and one whose
        # ledger row a database crash took (the table is UNLOGGED).
        for index, delivery_id in enumerate((sent, bounced, in_flight, reserved, unledgered)):
            row = session.get_one(Delivery, delivery_id)
            row.status, row.to_address = "sending", f"reader{index}@example.cn"
        session.add_all(
            [
                SendClaim(
                    delivery_id=sent, claimed_at=claimed_at, result="sent", message_id="<m1@x>"
                ),
                SendClaim(
                    delivery_id=bounced,
                    claimed_at=claimed_at,
                    result="hard_bounce",
                    code="550",
                    reason="5.1.1 User unknown",
                ),
                SendClaim(delivery_id=in_flight, claimed_at=claimed_at),
                SendClaim(delivery_id=reserved),
            ]
        )

    # Within the lease nothing is touched: the worker may still be sending.
    assert tasks.send_delivery(str(reserved)) == "sending"
    assert tasks.resume_due() == 0
    clock.advance(SENDING_LEASE + timedelta(seconds=1))
    assert tasks.resume_due() == 1

    assert (delivery(sent).status, delivery(sent).provider_message_id) == ("sent", "<m1@x>")
    assert delivery(sent).sending_at == claimed_at
    assert len(events_of(contacts[0], "email_sent")) == 1
    assert (delivery(bounced).status, delivery(bounced).error_code) == ("bounced", "550")
    with db.session_scope() as session:
        assert session.scalars(select(Suppression.address)).all() == ["reader1@example.cn"]
    for unknown in (in_flight, unledgered):
        assert (delivery(unknown).status, delivery(unknown).error_code) == (
            "failed",
            "ambiguous_send",
        )
    # Only the never-claimed one went out, once.
    assert delivery(reserved).status == "sent"
    assert [m.recipients for m in mailbox.messages] == [["reader3@example.cn"]]
    assert ledger_rows() == []


def test_the_ledger_is_unlogged_on_postgresql(pg_backend: Backend) -> None:
    with db.session_scope() as session:
        persistence = session.scalar(
            text("SELECT relpersistence FROM pg_class WHERE relname = 'send_claims'")
        )
    assert persistence == "u"


@pytest.fixture
def pg_template(
    channels_env: None, backend: Backend, client: TestClient, admin_key: str, morning: None
) -> uuid.UUID:
    return uuid.UUID(create_template(client, admin_key))


# Row locks and the held connection are PostgreSQL's: these run on it alone.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_task_leaves_a_delivery_another_run_holds_to_that_run(
    pg_template: uuid.UUID, mailbox: MailHandler
) -> None:
    (queued,) = queue_emails(pg_template, [make_contact()])
    with db.session_scope() as holder:
        holder.get_one(Delivery, queued, with_for_update=True)
        # Returns at once (the holder sends it, or queues a task for it after its commit).
        assert tasks.send_delivery(str(queued)) == "sending"
        assert mailbox.messages == []
    assert tasks.send_delivery(str(queued)) == "sent"
    assert len(mailbox.messages) == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_dropped_held_connection_is_replaced_by_the_next_task(
    pg_template: uuid.UUID, mailbox: MailHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_SEND_BATCH_SIZE", "1")
    get_channel_settings.cache_clear()
    first, second = queue_emails(pg_template, [make_contact(), make_contact(email="b@example.cn")])
    assert tasks.send_delivery(str(first)) == "sent"
    held_pid = claims.held_connection(db.get_engine()).exec_driver_sql("SELECT pg_backend_pid()")
    with db.session_scope() as session:
        # As a server restart or an idle timeout drops it.
        session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": held_pid.scalar()})

    assert tasks.send_delivery(str(second)) == "sent"
    assert len(mailbox.messages) == 2


def test_a_transaction_that_records_many_sends_enqueues_one_task_per_send_batch(
    channels_env: None,
    mailbox: MailHandler,
    client: TestClient,
    admin_key: str,
    morning: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from channels import service

    monkeypatch.setenv("NURTURE_SEND_BATCH_SIZE", "3")
    get_channel_settings.cache_clear()
    template_id = uuid.UUID(create_template(client, admin_key))
    contacts = [make_contact(email=f"batch{i}@example.cn") for i in range(7)]
    enqueued: list[list[str]] = []
    apply_async = tasks.send_deliveries.apply_async

    def recording(*args: object, **kwargs: object) -> object:
        enqueued.append(list(kwargs["args"][0]))  # type: ignore[index]
        return apply_async(*args, **kwargs)

    monkeypatch.setattr(tasks.send_deliveries, "apply_async", recording)
    with db.session_scope() as session:
        ids = [
            service.send(
                session,
                contact_id=contact_id,
                channel="email",
                template_id=template_id,
                idempotency_key=f"many:{index}",
            ).id
            for index, contact_id in enumerate(contacts)
        ]

    assert [len(batch) for batch in enqueued] == [3, 3, 1]
    assert sorted(d for batch in enqueued for d in batch) == sorted(str(i) for i in ids)
    assert [delivery(i).status for i in ids] == ["sent"] * 7
    assert sorted(m.recipients[0] for m in mailbox.messages) == sorted(
        f"batch{i}@example.cn" for i in range(7)
    )
    assert tasks.send_deliveries([str(i) for i in ids]) == {str(i): "sent" for i in ids}
    assert len(mailbox.messages) == 7
