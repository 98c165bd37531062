"""Turns what happens to messages (sent, opened, clicked, unsubscribed, bounced) into events on
the contact, through the capture queue like any other event, once the transaction commits."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.orm import Session

from capture.models import Contact, Identity
from capture.queue import QueueUnavailable, get_queue
from capture.tracking import envelope_for_single
from core.arrays import RowsInsert
from core.clock import clock
from core.models import table_of

log = logging.getLogger(__name__)

# Channel events are not sent by any website, so they carry a fixed source id of their own.
CHANNELS_SOURCE_ID = uuid.uuid5(uuid.NAMESPACE_URL, "nurture:channels")
_PENDING_KEY = "nurture_channel_events"
_BINDINGS_KEY = "nurture_contact_bindings"
# Bindings committed by this session already: a run that commits after every message (sending)
# writes each contact's binding once.
_BOUND_KEY = "nurture_contact_bound"
WRITE_BINDINGS = RowsInsert(
    table_of(Identity), ["contact_id", "kind", "value", "created_at"], conflict=["kind", "value"]
)


def contact_anonymous_id(session: Session, contact: Contact) -> str:
    """An anonymous id bound to this very contact, so ingest resolves the event to it (and to
    whoever it is merged into later) without needing an email or user id on a track call.
    The binding is written with the transaction, for all contacts of the transaction at once."""
    anonymous_id = f"nurture-contact:{contact.id}"
    if anonymous_id not in session.info.get(_BOUND_KEY, ()):
        bindings: dict[str, Any] = session.info.setdefault(_BINDINGS_KEY, {})
        bindings.setdefault(anonymous_id, contact.id)
    return anonymous_id


def track(
    session: Session,
    contact: Contact,
    name: str,
    properties: dict[str, Any],
    message_id: str,
) -> None:
    """Queues a track event for the contact; `message_id` makes a repeat a no-op at ingest."""
    now = clock.now()
    body = {
        "anonymousId": contact_anonymous_id(session, contact),
        "event": name,
        "properties": properties,
        "messageId": message_id,
        "timestamp": now.isoformat(),
        "context": {"library": {"name": "nurture-channels"}},
    }
    meta = {"sourceId": str(CHANNELS_SOURCE_ID), "ip": None, "userAgent": None, "sentAt": None}
    envelope = envelope_for_single(body, "track", now, meta, timedelta(minutes=5))
    session.info.setdefault(_PENDING_KEY, []).append(envelope)


@event.listens_for(Session, "before_commit")
def _bind_contacts(session: Session) -> None:
    bindings = session.info.pop(_BINDINGS_KEY, None)
    if not bindings:
        return
    now = clock.now()
    WRITE_BINDINGS(
        session,
        [
            {"contact_id": contact_id, "kind": "anonymous", "value": value, "created_at": now}
            for value, contact_id in sorted(bindings.items())
        ],
    )
    session.info.setdefault(_BOUND_KEY, set()).update(bindings)


@event.listens_for(Session, "after_commit")
def _put_pending(session: Session) -> None:
    envelopes = session.info.pop(_PENDING_KEY, None)
    if not envelopes:
        return
    try:
        get_queue().put_sync(orjson.dumps(envelopes))
    except QueueUnavailable:
        log.exception("could not queue %d channel events", len(envelopes))


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, _previous: Any) -> None:
    session.info.pop(_PENDING_KEY, None)
    session.info.pop(_BINDINGS_KEY, None)
    # A rollback may have undone bindings written since the last commit.
    session.info.pop(_BOUND_KEY, None)
