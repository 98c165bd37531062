"""Handoff test helpers: a frozen Monday morning in Shanghai, contacts written straight into
capture's tables, reps and their API keys, and the channels fakes for notifications."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select

from capture.models import Company, Contact
from core.clock import clock
from core.db import session_scope
from core.keys import ApiKey, Role, create_api_key
from handoff import service
from handoff.models import Lead, Rep
from handoff.schemas import RepCreate, RuleCreate, TeamCreate
from tests.channels.conftest import channels_env, dysms, receiver, robots, smtp_server
from tests.conftest import Backend

__all__ = ["channels_env", "dysms", "receiver", "robots", "smtp_server"]

MONDAY_10_SHANGHAI = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


@pytest.fixture
def now(backend: Backend) -> datetime:
    clock.freeze(MONDAY_10_SHANGHAI)
    return MONDAY_10_SHANGHAI


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_contact(
    traits: dict[str, Any] | None = None,
    email: str | None = None,
    company: dict[str, Any] | None = None,
    company_id: uuid.UUID | None = None,
) -> uuid.UUID:
    contact_id = uuid.uuid4()
    at = clock.now()
    with session_scope() as session:
        if company is not None:
            company_id = uuid.uuid4()
            session.execute(
                insert(Company).values(
                    id=company_id,
                    group_id=str(company_id),
                    name=company.pop("name", None),
                    traits=company,
                    created_at=at,
                    updated_at=at,
                )
            )
        session.execute(
            insert(Contact).values(
                id=contact_id,
                email=email,
                is_known=True,
                traits=traits or {},
                tags=[],
                event_counts={},
                company_id=company_id,
                lifecycle_stage="mql",
                created_at=at,
                updated_at=at,
            )
        )
    return contact_id


def company_of(contact_id: uuid.UUID) -> uuid.UUID | None:
    with session_scope() as session:
        return session.scalar(select(Contact.company_id).where(Contact.id == contact_id))


def make_team(name: str = "East", **fields: Any) -> uuid.UUID:
    with session_scope() as session:
        return service.create_team(session, TeamCreate(name=name, **fields)).id


def make_rep(name: str, **fields: Any) -> uuid.UUID:
    with session_scope() as session:
        return service.create_rep(session, RepCreate(name=name, **fields)).id


def make_rule(name: str, position: int, kind: str, **fields: Any) -> uuid.UUID:
    with session_scope() as session:
        body = RuleCreate(name=name, position=position, kind=kind, **fields)  # type: ignore[arg-type]
        return service.create_rule(session, body).id


def key_for(rep_id: uuid.UUID) -> str:
    """An API key acting as the rep (or manager) with this id."""
    with session_scope() as session:
        rep = session.get(Rep, rep_id)
        assert rep is not None
        api_key, plain = create_api_key(session, rep.name, Role(rep.role))
        session.get(ApiKey, api_key.id).user_id = rep_id  # type: ignore[union-attr]
    return plain


def route(contact_id: uuid.UUID, key: str | None = None) -> Lead:
    with session_scope() as session:
        return service.route_contact(session, contact_id, "manual", key or f"t:{uuid.uuid4()}")


def lead(lead_id: uuid.UUID) -> Lead:
    with session_scope() as session:
        found = session.get(Lead, lead_id)
        assert found is not None
        return found
