"""Channel tasks: send one delivery, re-enqueue the ones that became due, and turn stored
events into webhook deliveries for subscribed endpoints."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from channels import sending, subscriptions
from channels.models import Delivery
from channels.settings import get_channel_settings
from core import feed
from core.clock import clock
from core.db import is_postgres
from core.tasks import enqueue_in_batches_after_commit, task

RESUME_BATCH = 1000
# A queued delivery whose task has not run by then lost its broker message: enqueue it again.
STALE_QUEUED = timedelta(minutes=10)


@task("channels.send_delivery", max_retries=0)
def send_delivery(session: Session, delivery_id: str) -> str:
    return sending.deliver(session, uuid.UUID(delivery_id))


@task("channels.send_deliveries", max_retries=0)
def send_deliveries(session: Session, delivery_ids: list[str]) -> dict[str, str]:
    statuses = sending.deliver_many(session, [uuid.UUID(d) for d in delivery_ids])
    return {str(delivery_id): status for delivery_id, status in statuses.items()}


def send_after_commit(session: Session, delivery_id: uuid.UUID) -> None:
    """Sends the delivery once this transaction commits, in one task with the other deliveries
    the transaction recorded (up to a send batch)."""
    batch_size = get_channel_settings().send_batch_size
    enqueue_in_batches_after_commit(session, send_deliveries, str(delivery_id), batch_size)


def claim_due(session: Session, limit: int = RESUME_BATCH) -> list[uuid.UUID]:
    """Marks deliveries whose wait is over (or whose task was lost) queued again, after
    resolving the ones a stopped worker left "sending"."""
    now = clock.now()
    requeued = recover_interrupted(session, now, limit)
    stmt = (
        select(Delivery.id)
        .where(
            or_(
                (Delivery.status == "deferred") & (Delivery.next_attempt_at <= now),
                (Delivery.status == "queued") & (Delivery.updated_at < now - STALE_QUEUED),
            )
        )
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
    )
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    ids = list(session.scalars(stmt))
    if ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(status="queued", next_attempt_at=None, updated_at=now)
        )
    return [*requeued, *ids]


def recover_interrupted(session: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    """Resolves deliveries left "sending" past the lease; returns the ones queued again."""
    stmt = (
        select(Delivery)
        .where(Delivery.status == "sending", Delivery.updated_at < now - sending.SENDING_LEASE)
        .limit(limit)
    )
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    stale = list(session.scalars(stmt))
    sending.recover_interrupted(session, stale, now, get_channel_settings())
    session.flush()
    return [delivery.id for delivery in stale if delivery.status == "queued"]


@task("channels.resume_due", max_retries=0)
def resume_due(session: Session) -> int:
    ids = claim_due(session)
    for delivery_id in ids:
        send_after_commit(session, delivery_id)
    return len(ids)


def send_for_changes(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    for delivery_id in subscriptions.deliveries_for_changes(session, records):
        send_after_commit(session, delivery_id)


feed.subscribe("channels.webhooks", send_for_changes)
