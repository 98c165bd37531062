"""Handoff's tasks: routing every new MQL from the change feed, and the SLA sweep."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session

from api.errors import ApiError
from core import feed
from core.clock import clock
from core.tasks import task
from handoff import service
from handoff.routing import Router
from scoring.emit import BECAME_MQL

log = logging.getLogger(__name__)
FEED_CONSUMER = "handoff"


def handle_changes(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    """Routes each contact whose `became_mql` event was stored, keyed by that event; a contact
    deleted since is skipped so that it cannot hold the feed up."""
    mqls = [
        r for r in records if r.kind == feed.EVENT_STORED and r.payload.get("name") == BECAME_MQL
    ]
    if not mqls:
        return
    router = Router(session, clock.now())
    for record in mqls:
        try:
            service.route_contact(
                session,
                record.contact_id,
                BECAME_MQL,
                f"mql:{record.payload['event_id']}",
                mql_at=record.created_at,
                router=router,
            )
        except ApiError as exc:
            log.warning("not routing contact %s: %s", record.contact_id, exc.message)


def subscribe() -> None:
    feed.subscribe(FEED_CONSUMER, handle_changes)


@task("handoff.enforce_sla", max_retries=0)
def enforce_sla(session: Session) -> int:
    """Moves leads whose SLA ran out on, then hands waiting leads to reps now eligible."""
    return service.enforce_sla(session) + service.route_waiting(session)


subscribe()
