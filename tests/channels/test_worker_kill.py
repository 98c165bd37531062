"""A real Celery worker SIGKILLed in the middle of a batch of emails, while the SMTP server holds
one message without answering, then restarted: no email goes out twice, the ones sent before the
kill are recorded from the answers noted in the claim ledger, the unsent ones go out, and the one
whose fate is unknown is failed with the reason instead of being resent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, select, update

from capture.models import Contact
from channels.models import Delivery, SendClaim, Template
from channels.sending import SENDING_LEASE
from core.db import session_scope
from tests.channels.fakes import MailHandler, free_port
from tests.conftest import Backend
from tests.journeys.test_worker_kill import wait_for

WORKER_REDIS = "redis://127.0.0.1:6379/13"
EMAILS = 10
STALL_AT = 4
QUIET = ("-Q", "default", "--loglevel", "WARNING")


class StallingMailHandler(MailHandler):
    """Takes in the STALL_AT-th message, then holds its reply until released: the worker cannot
    know whether that one went out."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) == STALL_AT:
            self.stalled.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return reply


@pytest.fixture
def stalling_smtp() -> Iterator[tuple[int, StallingMailHandler]]:
    handler = StallingMailHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, handler
    handler.release.set()
    controller.stop()


@pytest.fixture
def worker_dir(tmp_path: Path) -> Iterator[Path]:
    import redis

    redis.Redis.from_url(WORKER_REDIS).flushdb()
    yield tmp_path
    redis.Redis.from_url(WORKER_REDIS).flushdb()


def start_worker(backend: Backend, data_dir: Path, smtp_port: int) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "NURTURE_ENV": "test",
        "NURTURE_DATABASE_URL": backend.database_url,
        "NURTURE_REDIS_URL": WORKER_REDIS,
        "NURTURE_DATA_DIR": str(data_dir),
        "NURTURE_SMTP_HOST": "127.0.0.1",
        "NURTURE_SMTP_PORT": str(smtp_port),
        "NURTURE_SMTP_TIMEOUT_SECONDS": "60",
        "NURTURE_SMTP_FROM": "Acme <news@acme.example>",
        "NURTURE_PUBLIC_URL": "https://nurture.example.com",
    }
    environment.pop("NURTURE_SEND_BATCH_SIZE", None)  # the default batching is what is tested
    return subprocess.Popen(
        # One pool process, so one task takes the whole batch and the kill lands mid-batch.
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-B", "-c", "1", *QUIET],
        env=environment,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def statuses() -> Counter[tuple[str, bool]]:
    """(status, whether a claim was made) of every delivery."""
    with session_scope() as session:
        rows = session.execute(
            select(Delivery.status, Delivery.sending_at.is_not(None), func.count()).group_by(
                Delivery.status, Delivery.sending_at.is_not(None)
            )
        ).all()
    return Counter({(status, claimed): count for status, claimed, count in rows})


def ledger() -> Counter[str]:
    """The claim-before-send ledger rows, by how far their message got."""
    with session_scope() as session:
        rows = session.execute(select(SendClaim.claimed_at, SendClaim.result)).all()
    return Counter(
        "reserved" if claimed_at is None else "claimed" if result is None else "answered"
        for claimed_at, result in rows
    )


def settled() -> bool:
    return not {status for status, _ in statuses()} & {"queued", "sending", "deferred"}


def test_worker_killed_mid_batch_sends_nothing_twice(
    pg_backend: Backend, worker_dir: Path, stalling_smtp: tuple[int, StallingMailHandler]
) -> None:
    port, mailbox = stalling_smtp
    with session_scope() as session:
        template = Template(
            name="Receipt",
            channel="email",
            purpose="transactional",
            subject="Your receipt",
            html='<p>Thanks {{ contact.email }}. <a href="https://acme.example/r">Receipt</a></p>',
        )
        contacts = [Contact(email=f"buyer{i}@example.cn", is_known=True) for i in range(EMAILS)]
        session.add_all([template, *contacts])
        session.flush()
        # Queued long enough ago that the worker's periodic task picks them up as lost tasks.
        long_ago = func.now() - timedelta(minutes=15)
        for index, contact in enumerate(contacts):
            session.add(
                Delivery(
                    idempotency_key=f"receipt:{index}",
                    contact_id=contact.id,
                    channel="email",
                    template_id=template.id,
                    transactional=True,
                    created_at=long_ago,
                    updated_at=long_ago,
                )
            )

    worker = start_worker(pg_backend, worker_dir, port)
    try:
        assert mailbox.stalled.wait(timeout=120), "the worker never reached the stalled message"
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        mailbox.release.set()
    # One batch took all ten: three went out and their answers were noted in the ledger, the
    # fourth was claimed and is in the server's hands, the other six were reserved and never
    # left. The batch's outcomes were not yet recorded on the deliveries.
    assert statuses() == {("sending", False): EMAILS}
    assert ledger() == {"answered": 3, "claimed": 1, "reserved": 6}
    assert len(mailbox.messages) == STALL_AT

    with session_scope() as session:
        # The claims' lease (minutes of real time) runs out at once.
        session.execute(
            update(Delivery)
            .where(Delivery.status == "sending")
            .values(updated_at=func.now() - SENDING_LEASE - timedelta(seconds=1))
        )
    worker = start_worker(pg_backend, worker_dir, port)
    try:
        wait_for(settled)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)

    received = Counter(recipient for mail in mailbox.messages for recipient in mail.recipients)
    assert received == {f"buyer{i}@example.cn": 1 for i in range(EMAILS)}
    assert statuses() == {("sent", True): EMAILS - 1, ("failed", True): 1}
    assert ledger() == {}
    with session_scope() as session:
        ambiguous = session.scalar(select(Delivery).where(Delivery.status == "failed"))
        assert ambiguous is not None and ambiguous.error_code == "ambiguous_send"
        stalled_to = mailbox.messages[STALL_AT - 1].recipients
        contact = session.get(Contact, ambiguous.contact_id)
        assert contact is not None and [contact.email] == stalled_to
