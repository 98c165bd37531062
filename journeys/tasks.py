"""Journeys' Celery tasks (thin: ids in, service out) and its change-feed subscriptions."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from core.tasks import enqueue_after_commit, task
from journeys import date_triggers, engine, segments, service

SCHEDULER_BATCH = 2000
# Enrollments one advance task runs together, in one transaction.
ADVANCE_BATCH = 500


@task("journeys.rebuild_segments", queue="default", max_retries=3)
def rebuild_segments(session: Session) -> int:
    return segments.rebuild_all(session)


@task("journeys.start_date_triggers", queue="default", max_retries=3)
def start_date_triggers(session: Session) -> int:
    """Enrolls contacts whose date-trait trigger is due in their time zone (idempotent: run
    it as often as the triggers' times of day need)."""
    return date_triggers.start_due(session)


@task("journeys.schedule", queue="default", max_retries=0)
def schedule(session: Session) -> int:
    """Claims due enrollments and hands them, in batches, to `advance_batch` tasks once the
    claim commits."""
    claimed = engine.claim_due(session, SCHEDULER_BATCH)
    for start in range(0, len(claimed), ADVANCE_BATCH):
        batch = [str(enrollment_id) for enrollment_id in claimed[start : start + ADVANCE_BATCH]]
        enqueue_after_commit(session, advance_batch, batch)
    return len(claimed)


@task("journeys.advance_batch", queue="default", max_retries=3)
def advance_batch(session: Session, enrollment_ids: list[str]) -> int:
    return engine.advance_many(session, [uuid.UUID(i) for i in enrollment_ids])


@task("journeys.advance", queue="default", max_retries=3)
def advance(session: Session, enrollment_id: str) -> None:
    """One enrollment (tasks queued before batches existed still arrive here)."""
    engine.advance(session, uuid.UUID(enrollment_id))


segments.subscribe()
service.subscribe()
