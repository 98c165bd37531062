"""Journeys' Celery tasks (thin: ids in, service out) and its change-feed subscriptions."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from core.tasks import enqueue_after_commit, task
from journeys import engine, segments, service

SCHEDULER_BATCH = 500


@task("journeys.rebuild_segments", queue="default", max_retries=3)
def rebuild_segments(session: Session) -> int:
    return segments.rebuild_all(session)


@task("journeys.schedule", queue="default", max_retries=0)
def schedule(session: Session) -> int:
    """Claims due enrollments and hands each to an `advance` task once the claim commits."""
    claimed = engine.claim_due(session, SCHEDULER_BATCH)
    for enrollment_id in claimed:
        enqueue_after_commit(session, advance, str(enrollment_id))
    return len(claimed)


@task("journeys.advance", queue="default", max_retries=3)
def advance(session: Session, enrollment_id: str) -> None:
    engine.advance(session, uuid.UUID(enrollment_id))


segments.subscribe()
service.subscribe()
