"""Lifecycle stages and their transitions: automatic moves only go forward, explicit ones may
go anywhere with a reason, and every move is recorded with its time and cause."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from attribution import record_milestones
from capture.models import Contact, Event
from core.db import is_postgres
from core.models import UTCDateTime, table_of
from scoring.engine import current_score_sql
from scoring.models import ContactScore, LifecycleTransition

STAGES = ("subscriber", "lead", "mql", "sql", "opportunity", "customer")
OUTSIDE_STAGES = ("disqualified", "other")
ALL_STAGES = STAGES + OUTSIDE_STAGES
MQL = "mql"
# Events that move a contact forward on their own (sent by forms, handoff and the CRM).
STAGE_EVENTS = {
    "form_submitted": "lead",
    "whitepaper_downloaded": "lead",
    "sales_accepted": "sql",
    "opportunity_created": "opportunity",
    "deal_won": "customer",
}
# Stages a score may lift to MQL; later stages are past it and outside stages are a person's call.
BEFORE_MQL = ("subscriber", "lead")
CHUNK = 1000


@dataclass(frozen=True)
class Move:
    contact_id: uuid.UUID
    stage: str
    occurred_at: datetime
    cause: str
    reason: str | None = None
    event_id: int | None = None


def rank(stage: str | None) -> int:
    return STAGES.index(stage) + 1 if stage in STAGES else 0


def latest_recorded(session: Session, contact_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    newest = (
        select(func.max(LifecycleTransition.id))
        .where(LifecycleTransition.contact_id.in_(contact_ids))
        .group_by(LifecycleTransition.contact_id)
    )
    return dict(
        session.execute(
            select(LifecycleTransition.contact_id, LifecycleTransition.to_stage).where(
                LifecycleTransition.id.in_(newest)
            )
        ).all()
    )


def advance(
    session: Session,
    moves: Iterable[Move],
    now: datetime,
    reconcile: Collection[uuid.UUID] = (),
) -> list[dict[str, Any]]:
    """Applies automatic moves that go forward; returns the transitions recorded.

    A stage set without a recorded transition (ingest marks known contacts subscribers and
    form submitters leads) is recorded first, for the contacts moved and those in `reconcile`.
    Contacts in disqualified or other are never moved automatically."""
    by_contact: dict[uuid.UUID, list[Move]] = defaultdict(list)
    for move in sorted(moves, key=lambda m: (m.occurred_at, rank(m.stage))):
        by_contact[move.contact_id].append(move)
    contact_ids = list(set(by_contact) | set(reconcile))
    transitions: list[dict[str, Any]] = []
    for start in range(0, len(contact_ids), CHUNK):
        chunk = contact_ids[start : start + CHUNK]
        query = select(Contact.id, Contact.lifecycle_stage).where(Contact.id.in_(chunk))
        if is_postgres(session):
            # Only non-key columns change: NO KEY UPDATE lets handoff insert leads (a foreign
            # key share lock on the contact) while stages move.
            query = query.with_for_update(key_share=True)
        stages: dict[uuid.UUID, str | None] = dict(session.execute(query).all())
        recorded = latest_recorded(session, chunk)
        changed: dict[uuid.UUID, str] = {}
        for contact_id, stage in stages.items():
            own = by_contact.get(contact_id, [])
            if stage is not None and recorded.get(contact_id) != stage:
                at = min(own[0].occurred_at, now) if own else now
                catch_up = Move(contact_id, stage, at, "capture", "stage set at capture")
                transitions.append(_transition(contact_id, recorded.get(contact_id), catch_up, now))
            for move in own:
                current = stages[contact_id]
                if current in OUTSIDE_STAGES or rank(move.stage) <= rank(current):
                    continue
                transitions.append(_transition(contact_id, current, move, now))
                stages[contact_id] = changed[contact_id] = move.stage
        if changed:
            contacts = table_of(Contact)
            session.execute(
                update(contacts)
                .where(contacts.c.id == bindparam("b_id"))
                .values(lifecycle_stage=bindparam("stage"), updated_at=now),
                [{"b_id": cid, "stage": stage} for cid, stage in changed.items()],
            )
    if transitions:
        rows = session.execute(
            insert(LifecycleTransition).returning(
                LifecycleTransition.id, sort_by_parameter_order=True
            ),
            transitions,
        ).all()
        for transition, row in zip(transitions, rows, strict=True):
            transition["id"] = row.id
        _record_milestones(session, now, min(r.id for r in rows), max(r.id for r in rows))
    return transitions


def _record_milestones(
    session: Session, now: datetime, first_id: int, last_id: int | None = None
) -> None:
    """Tells attribution which of the transitions just recorded (ids from `first_id`, all of
    them recorded at `now`) made a contact a lead or an MQL: those are conversions."""
    ids = LifecycleTransition.id >= first_id
    if last_id is not None:
        ids = ids & (LifecycleTransition.id <= last_id)
    record_milestones(
        session,
        select(
            LifecycleTransition.contact_id,
            LifecycleTransition.to_stage,
            LifecycleTransition.occurred_at,
        ).where(ids, LifecycleTransition.recorded_at == now),
    )


def _transition(
    contact_id: uuid.UUID, from_stage: str | None, move: Move, now: datetime
) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "from_stage": from_stage,
        "to_stage": move.stage,
        "cause": move.cause,
        "reason": move.reason,
        "event_id": move.event_id,
        "actor_key_id": None,
        "occurred_at": move.occurred_at,
        "recorded_at": now,
    }


def reconcile_all(session: Session, now: datetime) -> None:
    """Records, in one INSERT … SELECT, the stage of every contact whose stage was set without
    a recorded transition (by capture, or by a bulk load)."""
    newest_ids = (
        select(func.max(LifecycleTransition.id).label("id"))
        .group_by(LifecycleTransition.contact_id)
        .subquery()
    )
    latest = (
        select(LifecycleTransition.contact_id, LifecycleTransition.to_stage)
        .join(newest_ids, newest_ids.c.id == LifecycleTransition.id)
        .subquery()
    )
    unrecorded = (
        select(
            Contact.id,
            latest.c.to_stage,
            Contact.lifecycle_stage,
            literal("capture"),
            literal("stage set at capture"),
            literal(now, UTCDateTime()),
            literal(now, UTCDateTime()),
        )
        .outerjoin(latest, latest.c.contact_id == Contact.id)
        .where(
            Contact.lifecycle_stage.is_not(None),
            Contact.merged_into_id.is_(None),
            or_(latest.c.to_stage.is_(None), latest.c.to_stage != Contact.lifecycle_stage),
        )
    )
    columns = ["contact_id", "from_stage", "to_stage", "cause", "reason", "occurred_at"]
    before = session.scalar(select(func.max(LifecycleTransition.id))) or 0
    session.execute(insert(LifecycleTransition).from_select([*columns, "recorded_at"], unrecorded))
    _record_milestones(session, now, before + 1)


def moves_for_events(session: Session, event_ids: Sequence[int] | None) -> list[Move]:
    """Forward moves the given events call for (every stored event when `event_ids` is None)."""
    query = select(Event.id, Event.contact_id, Event.name, Event.timestamp).where(
        Event.type == "track", Event.name.in_(list(STAGE_EVENTS))
    )
    if event_ids is not None:
        if not event_ids:
            return []
        query = query.where(Event.id.in_(list(event_ids)))
    return [
        Move(row.contact_id, STAGE_EVENTS[row.name], row.timestamp, "event", row.name, row.id)
        for row in session.execute(query.order_by(Event.timestamp, Event.id))
    ]


def mql_moves(
    session: Session,
    now: datetime,
    half_life_days: float,
    threshold: float,
    min_grade: str,
    contact_ids: Collection[uuid.UUID] | None = None,
) -> list[Move]:
    """Known contacts before MQL whose score and grade pass the thresholds now."""
    score_now = current_score_sql(now, half_life_days)
    query = (
        select(ContactScore.contact_id, score_now.label("score"), ContactScore.grade)
        .join(Contact, Contact.id == ContactScore.contact_id)
        .where(
            score_now >= threshold,
            ContactScore.grade <= min_grade,
            Contact.is_known.is_(True),
            Contact.merged_into_id.is_(None),
            or_(Contact.lifecycle_stage.is_(None), Contact.lifecycle_stage.in_(BEFORE_MQL)),
        )
    )
    if contact_ids is not None:
        if not contact_ids:
            return []
        query = query.where(ContactScore.contact_id.in_(list(contact_ids)))
    return [
        Move(
            row.contact_id,
            MQL,
            now,
            "score",
            f"score {row.score:.1f} reached {threshold:g} with fit grade {row.grade}"
            f" (at least {min_grade})",
        )
        for row in session.execute(query)
    ]


def set_stage(
    session: Session,
    contact: Contact,
    stage: str,
    reason: str,
    now: datetime,
    actor_key_id: uuid.UUID | None,
) -> LifecycleTransition:
    """An explicit move by a person: any direction, always with a reason."""
    transition = LifecycleTransition(
        contact_id=contact.id,
        from_stage=contact.lifecycle_stage,
        to_stage=stage,
        cause="manual",
        reason=reason,
        actor_key_id=actor_key_id,
        occurred_at=now,
        recorded_at=now,
    )
    contact.lifecycle_stage = stage
    contact.updated_at = now
    session.add(transition)
    session.flush()
    _record_milestones(session, now, transition.id, transition.id)
    return transition


def history(session: Session, contact_id: uuid.UUID) -> list[LifecycleTransition]:
    return list(
        session.scalars(
            select(LifecycleTransition)
            .where(LifecycleTransition.contact_id == contact_id)
            .order_by(LifecycleTransition.occurred_at, LifecycleTransition.id)
        )
    )
