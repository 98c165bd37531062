"""Handoff's tasks: routing every new MQL from the change feed, and the SLA sweep."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import scoring.tasks  # noqa: F401  (scoring's consumer subscribes first: a pass routes its MQLs)
from api.errors import ApiError
from capture.models import Contact, Event
from core import feed
from core.clock import clock
from core.db import is_postgres
from core.tasks import task
from handoff import service
from handoff.routing import Router
from scoring import lifecycle, scorer
from scoring.emit import BECAME_MQL
from scoring.models import LifecycleTransition

log = logging.getLogger(__name__)
FEED_CONSUMER = "handoff"


def mql_key(transition_id: object) -> str:
    """One lead per promotion to MQL, whether it is routed from the promotion itself or from
    the `became_mql` event that announces it later."""
    return f"mql:transition:{transition_id}"


@dataclass(frozen=True)
class Mql:
    contact_id: uuid.UUID
    at: datetime
    announced: bool  # by its `became_mql` event; otherwise seen as scoring's promotion


def mqls_in(session: Session, records: Sequence[feed.ChangeRecord]) -> dict[str, Mql]:
    """The MQLs to route for these changes, by lead key: each stored `became_mql` event, and
    each promotion scoring recorded while handling these same changes (scoring consumes
    first), so routing need not wait for the event to come round through capture."""
    found: dict[str, Mql] = {}
    events = {
        int(r.payload["event_id"]): r
        for r in records
        if r.kind == feed.EVENT_STORED and r.payload.get("name") == BECAME_MQL
    }
    properties: dict[int, dict[str, Any]] = {}
    if events:
        rows = session.execute(select(Event.id, Event.properties).where(Event.id.in_(events)))
        properties = {event_id: props for event_id, props in rows}
    for event_id, record in events.items():
        transition_id = (properties.get(event_id) or {}).get("transition_id")
        key = mql_key(transition_id) if transition_id else f"mql:{event_id}"
        found[key] = Mql(record.contact_id, record.created_at, announced=True)
    touched = {r.contact_id for r in records if r.kind == feed.EVENT_STORED}
    if touched:
        promotions = session.execute(
            select(
                LifecycleTransition.id,
                LifecycleTransition.contact_id,
                LifecycleTransition.occurred_at,
            )
            .where(
                LifecycleTransition.contact_id.in_(touched),
                LifecycleTransition.to_stage == lifecycle.MQL,
                LifecycleTransition.cause == "score",
                LifecycleTransition.recorded_at >= min(r.created_at for r in records),
            )
            .order_by(LifecycleTransition.id)
        ).all()
        for transition_id, contact_id, at in promotions:
            found.setdefault(mql_key(transition_id), Mql(contact_id, at, announced=False))
    return found


def lock_contacts(
    session: Session, contact_ids: set[uuid.UUID], skip_locked: bool
) -> set[uuid.UUID]:
    """Takes the contacts' key-share locks (what a lead's foreign key takes) all at once, in
    id order, so that routing a batch cannot deadlock with scoring locking the same contacts;
    returns the contacts locked (with `skip_locked`, those nobody else was holding)."""
    if not contact_ids or not is_postgres(session):
        return contact_ids
    query = (
        select(Contact.id)
        .where(Contact.id.in_(contact_ids))
        .order_by(Contact.id)
        .with_for_update(read=True, key_share=True, skip_locked=skip_locked)
    )
    return set(session.scalars(query))


def handle_changes(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    """Routes each contact that became an MQL, once per promotion; a contact deleted since is
    skipped so that it cannot hold the feed up. A promotion whose contact another transaction
    holds now is left to its `became_mql` event."""
    mqls = mqls_in(session, records)
    announced = {m.contact_id for m in mqls.values() if m.announced}
    ready = lock_contacts(session, announced, skip_locked=False) | lock_contacts(
        session, {m.contact_id for m in mqls.values()} - announced, skip_locked=True
    )
    router = Router(session, clock.now())
    for key, mql in sorted(mqls.items(), key=lambda item: item[1].contact_id):
        if mql.contact_id not in ready:
            continue
        try:
            service.route_contact(
                session, mql.contact_id, BECAME_MQL, key, mql_at=mql.at, router=router
            )
        except ApiError as exc:
            log.warning("not routing contact %s: %s", mql.contact_id, exc.message)


def subscribe() -> None:
    feed.subscribe(FEED_CONSUMER, handle_changes, after=[scorer.FEED_CONSUMER])


@task("handoff.enforce_sla", max_retries=0)
def enforce_sla(session: Session) -> int:
    """Moves leads whose SLA ran out on, then hands waiting leads to reps now eligible."""
    return service.enforce_sla(session) + service.route_waiting(session)


subscribe()
