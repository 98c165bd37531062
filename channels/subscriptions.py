"""Webhook event subscriptions: stored events whose name an active endpoint subscribes to
become webhook deliveries, one per endpoint and event, created in bulk from the change feed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from capture.models import Event
from channels.models import Delivery, WebhookEndpoint
from core.clock import clock
from core.db import dialect_insert
from core.feed import EVENT_STORED, ChangeRecord

ALL_EVENTS = "*"


def deliveries_for_changes(session: Session, records: Sequence[ChangeRecord]) -> list[uuid.UUID]:
    """Creates the webhook deliveries these changes call for; returns the new ones' ids."""
    endpoints = list(
        session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.active.is_(True)))
    )
    subscribed = [endpoint for endpoint in endpoints if endpoint.events]
    stored = [r for r in records if r.kind == EVENT_STORED and r.payload.get("event_id")]
    if not subscribed or not stored:
        return []
    wanted = {
        r.payload["event_id"]
        for r in stored
        for endpoint in subscribed
        if ALL_EVENTS in endpoint.events or r.payload.get("name") in endpoint.events
    }
    if not wanted:
        return []
    events = session.scalars(select(Event).where(Event.id.in_(wanted))).all()
    now = clock.now()
    rows = []
    for event in events:
        for endpoint in subscribed:
            if ALL_EVENTS not in endpoint.events and event.name not in endpoint.events:
                continue
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "idempotency_key": f"webhook:{endpoint.id}:event:{event.id}",
                    "contact_id": event.contact_id,
                    "channel": "webhook",
                    "status": "queued",
                    "transactional": True,
                    "to_address": str(endpoint.id),
                    "attempts": 0,
                    "context": {
                        "type": f"event.{event.type}",
                        "event": {
                            "id": event.id,
                            "name": event.name,
                            "type": event.type,
                            "properties": event.properties,
                            "timestamp": event.timestamp.isoformat(),
                        },
                    },
                    "target": {"endpoint_id": str(endpoint.id)},
                    "created_at": now,
                    "updated_at": now,
                }
            )
    if not rows:
        return []
    insert = dialect_insert(session, Delivery)
    created = session.scalars(
        insert.on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(Delivery.id),
        rows,
    )
    return list(created)
