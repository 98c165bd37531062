"""Helpers for journeys tests: contacts and events written straight into the tables ingest
fills, at times relative to a frozen clock."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from capture.models import Contact, Event
from core import feed
from core.clock import clock
from core.db import session_scope
from core.keys import Role
from journeys import segments, service
from tests.conftest import make_key

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
SOURCE = uuid.UUID(int=7)
_message_ids = itertools.count()


def make_contact(traits: dict[str, Any] | None = None, **columns: Any) -> uuid.UUID:
    contact_id = uuid.uuid4()
    now = clock.now()
    with session_scope() as session:
        session.execute(
            insert(Contact).values(
                id=contact_id,
                is_known=True,
                traits=traits or {},
                created_at=now,
                updated_at=now,
                **columns,
            )
        )
    return contact_id


def make_event(
    contact_id: uuid.UUID,
    name: str | None,
    properties: dict[str, Any] | None = None,
    days_ago: float = 0,
    type: str = "track",
    **columns: Any,
) -> None:
    at = clock.now() - timedelta(days=days_ago)
    with session_scope() as session:
        session.execute(
            insert(Event).values(
                source_id=SOURCE,
                message_id=f"m{next(_message_ids)}",
                contact_id=contact_id,
                type=type,
                name=name,
                properties=properties or {},
                context={},
                timestamp=at,
                received_at=at,
                **columns,
            )
        )


@pytest.fixture(autouse=True)
def journeys_subscribed() -> None:
    segments.subscribe()
    service.subscribe()


def publish(kind: str, contact_id: uuid.UUID, payload: dict[str, Any] | None = None) -> None:
    with session_scope() as session:
        feed.publish(session, [feed.Change(kind, contact_id, payload or {})])


def dispatch() -> None:
    """Hands the change feed to its consumers until nothing is left."""
    while True:
        with session_scope() as session:
            if not feed.dispatch(session):
                return


def draft(client: TestClient, definition: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A draft journey made through the API by a marketer, and the marketer's headers."""
    headers = {"Authorization": f"Bearer {make_key(Role.marketer)}"}
    body = {"name": "Draft", "definition": definition}
    return client.post("/api/v1/journeys", json=body, headers=headers).json()["id"], headers
