"""Builds contacts, sessions and message clicks straight into capture's tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from capture.models import Contact, Event, Visit

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
SOURCE_ID = uuid.UUID(int=1)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def contact(session: Session, email: str | None = None) -> uuid.UUID:
    row = Contact(email=email, is_known=email is not None)
    session.add(row)
    session.flush()
    return row.id


def visit(
    session: Session,
    contact_id: uuid.UUID,
    at: datetime,
    channel: str,
    campaign: str | None = None,
) -> uuid.UUID:
    row = Visit(
        contact_id=contact_id,
        source_id=SOURCE_ID,
        started_at=at,
        last_event_at=at + timedelta(minutes=5),
        channel=channel,
        utm_campaign=campaign,
    )
    session.add(row)
    session.flush()
    return row.id


def click(
    session: Session, contact_id: uuid.UUID, at: datetime, name: str, **properties: Any
) -> int:
    row = Event(
        source_id=SOURCE_ID,
        message_id=uuid.uuid4().hex,
        contact_id=contact_id,
        type="track",
        name=name,
        properties=properties,
        timestamp=at,
        received_at=at,
    )
    session.add(row)
    session.flush()
    return row.id
