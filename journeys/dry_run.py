"""Dry run: the path a contact would take through a journey's draft, and why, with no side
effects. A made-up contact (traits and events) lives in a savepoint that is rolled back."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from capture.models import Contact, Event
from core.clock import clock
from journeys import date_triggers, engine
from journeys.definition import DATE_TRAIT, nodes_by_id
from journeys.models import Enrollment, Journey

MADE_UP_SOURCE = uuid.UUID(int=0)


def dry_run(
    session: Session,
    journey: Journey,
    definition: dict[str, Any],
    contact_id: uuid.UUID | None,
    made_up: dict[str, Any] | None,
) -> dict[str, Any]:
    """Walks the definition for one contact: how it would enter (`entry`), and one line per
    node with the reason (`path`)."""
    if contact_id is not None:
        return _explained(session, journey, definition, contact_id)
    savepoint = session.begin_nested()
    try:
        fake_id = _insert_made_up(session, made_up or {})
        return _explained(session, journey, definition, fake_id)
    finally:
        savepoint.rollback()


def _explained(
    session: Session, journey: Journey, definition: dict[str, Any], contact_id: uuid.UUID
) -> dict[str, Any]:
    return {
        "entry": entry_reason(session, definition["trigger"], contact_id),
        "path": _walk(session, journey, definition, contact_id),
    }


def entry_reason(session: Session, trigger: dict[str, Any], contact_id: uuid.UUID) -> str:
    """How the trigger would enroll the contact."""
    kind = trigger["type"]
    if kind == "event":
        filters = " with property filters" if trigger.get("where") else ""
        return f"enters when {engine.describe_awaited(trigger)}{filters} is stored"
    if kind in ("segment_entry", "segment_exit"):
        moment = "entering" if kind == "segment_entry" else "leaving"
        return f"enters on {moment} segment {trigger['segment_id']}"
    if kind == "trait_change":
        condition = " and the condition holds" if trigger.get("condition") else ""
        return f"enters when trait {trigger['trait']} changes{condition}"
    if kind == DATE_TRAIT:
        row = session.execute(
            select(Contact.traits, Contact.timezone).where(Contact.id == contact_id)
        ).one()
        return date_triggers.explain(trigger, row.traits or {}, row.timezone)
    return "enters only when enrolled by hand or through the API"


def _insert_made_up(session: Session, made_up: dict[str, Any]) -> uuid.UUID:
    contact_id = uuid.uuid4()
    now = clock.now()
    session.execute(
        insert(Contact).values(
            id=contact_id,
            is_known=True,
            traits=made_up.get("traits") or {},
            email=made_up.get("email"),
            phone=made_up.get("phone"),
            lifecycle_stage=made_up.get("lifecycle_stage"),
            email_consent=made_up.get("email_consent", "unknown"),
            sms_consent=made_up.get("sms_consent", "unknown"),
            timezone=made_up.get("timezone"),
            created_at=now,
            updated_at=now,
        )
    )
    for index, event in enumerate(made_up.get("events") or []):
        at = now - timedelta(days=event.get("days_ago", 0))
        session.execute(
            insert(Event).values(
                source_id=MADE_UP_SOURCE,
                message_id=f"dry-run-{contact_id}-{index}",
                contact_id=contact_id,
                type=event.get("type", "track"),
                name=event.get("name"),
                properties=event.get("properties") or {},
                context={},
                timestamp=at,
                received_at=at,
                url=event.get("url"),
                path=event.get("path"),
            )
        )
    return contact_id


def _walk(
    session: Session, journey: Journey, definition: dict[str, Any], contact_id: uuid.UUID
) -> list[dict[str, Any]]:
    nodes = nodes_by_id(definition)
    probe = Enrollment(
        id=uuid.UUID(int=0),
        journey_id=journey.id,
        contact_id=contact_id,
        current_node=definition["start"],
    )
    path: list[dict[str, Any]] = []
    node_id: str | None = definition["start"]
    now = clock.now()
    for _ in range(engine.MAX_STEPS_PER_RUN):
        if node_id is None:
            path.append({"node": None, "outcome": "completed", "why": "no next node"})
            return path
        goal = definition.get("goal")
        if goal is not None and engine.matches(session, contact_id, goal):
            path.append({"node": node_id, "outcome": "converted", "why": "the goal is met"})
            return path
        node = nodes[node_id]
        kind = node["type"]
        line: dict[str, Any] = {"node": node_id, "type": kind}
        if kind == "condition":
            met = engine.matches(session, contact_id, node["condition"])
            line["why"] = "the condition is met" if met else "the condition is not met"
            node_id = node.get("yes" if met else "no")
        elif kind == "split":
            index = engine.split_branch(journey.id, contact_id, node)
            line["why"] = f"this contact always falls in branch {index}"
            node_id = node["branches"][index]["next"]
        elif kind == "wait_for_event":
            timeout = engine.wake_time(session, probe, node, now) - now
            line["why"] = (
                f"waits up to {timeout} for {engine.describe_awaited(node)}: if it happens"
                f" the contact goes to {node['matched']}; shown here is the timeout path"
            )
            node_id = node["timed_out"]
        elif kind in ("wait", "wait_until"):
            wake = engine.wake_time(session, probe, node, now)
            line["why"] = f"waits until {wake.isoformat()}"
            node_id = node.get("next")
        elif kind == "exit":
            line["why"] = "leaves the journey"
            path.append(line)
            return path
        else:
            line["why"] = _action_reason(node)
            node_id = node.get("next")
        path.append(line)
    path.append({"node": node_id, "outcome": "stopped", "why": "too many steps in one run"})
    return path


def _action_reason(node: dict[str, Any]) -> str:
    kind = node["type"]
    if kind in ("send_email", "send_sms"):
        return f"would send template {node['template_id']} (policies apply at send time)"
    if kind == "update_contact":
        return f"would set traits {node.get('traits') or {}} and tags +{node.get('add_tags', [])}"
    if kind == "set_lifecycle_stage":
        return f"would set the lifecycle stage to {node['stage']}"
    if kind == "adjust_score":
        return f"would add {node['points']:+g} score points"
    return "would hand the contact to sales"
