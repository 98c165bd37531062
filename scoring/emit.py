"""Scoring's own events (`became_mql`, `cooled_below_mql`), sent through the capture queue
like any website's, and only once the transaction that decided them has committed."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.orm import Session

from capture.models import Identity
from capture.queue import QueueUnavailable, get_queue
from capture.tracking import envelope_for_single
from core.db import dialect_insert

log = logging.getLogger(__name__)

SCORING_SOURCE_ID = uuid.uuid5(uuid.NAMESPACE_URL, "nurture:scoring")
BECAME_MQL = "became_mql"
COOLED_BELOW_MQL = "cooled_below_mql"
ENVELOPES_PER_ENTRY = 500
_PENDING_KEY = "nurture_scoring_events"


def contact_anonymous_id(contact_id: uuid.UUID) -> str:
    """An anonymous id bound to the contact (the convention channels uses too), so ingest files
    the event under this contact, or whoever it is merged into later."""
    return f"nurture-contact:{contact_id}"


def track(
    session: Session,
    events: list[tuple[uuid.UUID, str, dict[str, Any], str, datetime]],
) -> None:
    """Queues (contact, event name, properties, message id, time) track events after commit;
    the message id makes a replay a no-op at ingest."""
    if not events:
        return
    anonymous_ids = {contact_id: contact_anonymous_id(contact_id) for contact_id, *_ in events}
    now = max(at for *_, at in events)
    stmt = dialect_insert(session, Identity).on_conflict_do_nothing(
        index_elements=["kind", "value"]
    )
    rows = [
        {"contact_id": cid, "kind": "anonymous", "value": value, "created_at": now}
        for cid, value in anonymous_ids.items()
    ]
    for start in range(0, len(rows), 1000):
        session.execute(stmt, rows[start : start + 1000])
    meta = {"sourceId": str(SCORING_SOURCE_ID), "ip": None, "userAgent": None, "sentAt": None}
    pending = session.info.setdefault(_PENDING_KEY, [])
    for contact_id, name, properties, message_id, at in events:
        body = {
            "anonymousId": anonymous_ids[contact_id],
            "event": name,
            "properties": properties,
            "messageId": message_id,
            "timestamp": at.isoformat(),
            "context": {"library": {"name": "nurture-scoring"}},
        }
        pending.append(envelope_for_single(body, "track", at, meta, timedelta(minutes=5)))


@event.listens_for(Session, "after_commit")
def _put_pending(session: Session) -> None:
    envelopes = session.info.pop(_PENDING_KEY, None)
    if not envelopes:
        return
    try:
        queue = get_queue()
        for start in range(0, len(envelopes), ENVELOPES_PER_ENTRY):
            queue.put_sync(orjson.dumps(envelopes[start : start + ENVELOPES_PER_ENTRY]))
    except QueueUnavailable:
        log.exception("could not queue %d scoring events", len(envelopes))


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, _previous: Any) -> None:
    session.info.pop(_PENDING_KEY, None)
