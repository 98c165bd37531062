"""A real Celery worker (with its beat) killed with SIGKILL in the middle of a step, then
restarted: every enrollment ends, and every step and message exists once. A contact that
another transaction holds does not hold up the rest of its batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from channels import service as channels
from channels.models import Delivery
from core.db import get_sessionmaker, session_scope
from journeys import service
from journeys.models import Enrollment, EnrollmentStep
from tests.conftest import Backend
from tests.journeys.conftest import make_contact
from tests.journeys.test_engine import make_template

WORKER_REDIS = "redis://127.0.0.1:6379/12"
CONTACTS = 5


def start_worker(backend: Backend, data_dir: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "NURTURE_ENV": "test",
        "NURTURE_DATABASE_URL": backend.database_url,
        "NURTURE_REDIS_URL": WORKER_REDIS,
        "NURTURE_DATA_DIR": str(data_dir),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-B",
            "-c",
            "2",
            "-Q",
            "default",
            "--loglevel",
            "WARNING",
        ],
        env=environment,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(condition: Callable[[], bool], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the worker did not get there in time")
        time.sleep(0.2)


def waiting_on_a_lock() -> int:
    with session_scope() as session:
        return (
            session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            or 0
        )


def finished() -> int:
    with session_scope() as session:
        return (
            session.scalar(
                select(func.count()).select_from(Enrollment).where(Enrollment.status == "completed")
            )
            or 0
        )


@pytest.fixture
def worker_dir(tmp_path: Path) -> Iterator[Path]:
    import redis

    redis.Redis.from_url(WORKER_REDIS).flushdb()
    yield tmp_path
    redis.Redis.from_url(WORKER_REDIS).flushdb()


def test_worker_killed_mid_step_resumes_without_sending_twice(
    pg_backend: Backend, worker_dir: Path
) -> None:
    template = make_template()
    definition = {
        "trigger": {"type": "manual"},
        "start": "mail",
        "nodes": [
            {"id": "mail", "type": "send_email", "template_id": template, "next": "tag"},
            {"id": "tag", "type": "update_contact", "add_tags": ["nurtured"]},
        ],
    }
    contacts = [make_contact(email=f"c{i}@example.com") for i in range(CONTACTS)]
    blocked = contacts[0]
    with session_scope() as session:
        journey = service.create_journey(session, "Kill test", definition)
        service.publish(session, journey.id)
        enrollments = [service.enroll_contact(session, journey.id, c).id for c in contacts]

    lock, rival = get_sessionmaker()(), get_sessionmaker()()
    lock.execute(text("SELECT id FROM contacts WHERE id = :id FOR NO KEY UPDATE"), {"id": blocked})
    # An open transaction holding the blocked contact's delivery key: its step, once it runs,
    # waits inside channels' INSERT with its batch's work so far uncommitted.
    channels.send(
        rival,
        contact_id=blocked,
        channel="email",
        template_id=uuid.UUID(template),
        idempotency_key=f"{enrollments[0]}:mail:1",
    )
    worker = start_worker(pg_backend, worker_dir)
    try:
        wait_for(lambda: finished() == CONTACTS - 1)  # the held contact was skipped
        lock.rollback()
        wait_for(lambda: waiting_on_a_lock() >= 1)  # ... and now its step is mid-way
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        rival.rollback()
        rival.close()
        lock.rollback()
        lock.close()
    with session_scope() as session:
        lost = session.scalar(select(Enrollment).where(Enrollment.contact_id == blocked))
        assert lost is not None and lost.status == "active"  # claimed, and its step lost
        assert session.scalar(select(func.count()).select_from(Delivery)) == CONTACTS - 1
        assert session.scalar(select(func.count()).select_from(EnrollmentStep)) == 2 * (
            CONTACTS - 1
        )
        # The claim lease (minutes of real time) runs out at once.
        session.execute(
            update(Enrollment)
            .where(Enrollment.status != "completed")
            .values(next_run_at=func.now() - text("interval '1 second'"))
        )
    worker = start_worker(pg_backend, worker_dir)
    try:
        wait_for(lambda: finished() == CONTACTS)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)

    with session_scope() as session:
        per_contact = dict(
            session.execute(
                select(Delivery.contact_id, func.count()).group_by(Delivery.contact_id)
            ).all()
        )
        steps = session.scalar(select(func.count()).select_from(EnrollmentStep))
    assert per_contact == {uuid.UUID(str(c)): 1 for c in contacts}
    assert steps == CONTACTS * 2
