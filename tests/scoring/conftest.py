"""Helpers for scoring tests: contacts, companies and events written straight into the tables
ingest fills, and the scoring feed consumer subscribed."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert

from capture.models import Company, Contact, Event
from core import feed
from core.clock import clock
from core.db import session_scope
from scoring import scorer

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
SOURCE = uuid.UUID(int=7)
_message_ids = itertools.count()


@pytest.fixture(autouse=True)
def scoring_subscribed() -> None:
    scorer.subscribe()


def make_contact(
    traits: dict[str, Any] | None = None,
    email: str | None = None,
    company: dict[str, Any] | None = None,
    known: bool = True,
    stage: str | None = None,
) -> uuid.UUID:
    contact_id = uuid.uuid4()
    now = clock.now()
    with session_scope() as session:
        company_id = None
        if company is not None:
            company_id = uuid.uuid4()
            session.execute(
                insert(Company).values(
                    id=company_id,
                    group_id=str(company_id),
                    traits=company,
                    created_at=now,
                    updated_at=now,
                )
            )
        session.execute(
            insert(Contact).values(
                id=contact_id,
                email=email,
                is_known=known,
                traits=traits or {},
                tags=[],
                event_counts={},
                company_id=company_id,
                lifecycle_stage=stage,
                created_at=now,
                updated_at=now,
            )
        )
    return contact_id


def add_event(
    contact_id: uuid.UUID,
    at: datetime,
    name: str | None = None,
    kind: str = "track",
    path: str | None = None,
    **properties: Any,
) -> int:
    with session_scope() as session:
        event_id = int(
            session.execute(
                insert(Event)
                .values(
                    source_id=SOURCE,
                    message_id=f"m{next(_message_ids)}",
                    contact_id=contact_id,
                    type=kind,
                    name=name,
                    properties=properties,
                    context={},
                    timestamp=at,
                    received_at=at,
                    path=path,
                    url=f"https://www.example.com{path}" if path else None,
                )
                .returning(Event.id)
            ).scalar_one()
        )
        change = feed.Change(feed.EVENT_STORED, contact_id, {"event_id": event_id, "name": name})
        feed.publish(session, [change])
    return event_id


def page(contact_id: uuid.UUID, at: datetime, path: str = "/") -> int:
    return add_event(contact_id, at, kind="page", path=path)


def process_feed() -> None:
    """What the beat's dispatch task does every second, until nothing is left."""
    while True:
        with session_scope() as session:
            if not feed.dispatch(session):
                return
