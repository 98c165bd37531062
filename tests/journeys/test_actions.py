"""Journey actions that reach into scoring (score points, lifecycle stage), and batches of
enrollments advanced together: the same number of statements for five contacts as for fifty."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from capture.models import Contact
from core.clock import clock
from core.db import get_engine, session_scope
from journeys import engine, service
from journeys.definition import DefinitionError, validate
from journeys.models import Enrollment, EnrollmentStep
from scoring import lifecycle
from scoring.models import ContactScore, ScoreEntry
from tests.conftest import Backend
from tests.journeys.conftest import T0, make_contact, make_event
from tests.journeys.test_engine import create_published, enrollment_of, path_of, tick


def ledger(contact_id: uuid.UUID) -> list[tuple[float, str | None]]:
    with session_scope() as session:
        rows = session.execute(
            select(ScoreEntry.points, ScoreEntry.note)
            .where(ScoreEntry.contact_id == contact_id, ScoreEntry.cause == "manual")
            .order_by(ScoreEntry.id)
        )
        return [(row.points, row.note) for row in rows]


def step_details(contact_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    with session_scope() as session:
        rows = session.execute(
            select(EnrollmentStep.node_id, EnrollmentStep.detail)
            .join(Enrollment, Enrollment.id == EnrollmentStep.enrollment_id)
            .where(Enrollment.contact_id == contact_id, EnrollmentStep.result == "done")
        )
        return {row.node_id: row.detail for row in rows}


def test_score_points_are_added_then_subtracted_once_each(backend: Backend) -> None:
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "manual"},
        "start": "reward",
        "nodes": [
            {"id": "reward", "type": "adjust_score", "points": 25, "next": "hold"},
            {"id": "hold", "type": "wait", "duration": {"days": 1}, "next": "penalty"},
            {"id": "penalty", "type": "adjust_score", "points": -10, "note": "went quiet"},
        ],
    }
    journey_id = create_published(definition)
    contact = make_contact()
    with session_scope() as session:
        enrollment_id = service.enroll_contact(session, journey_id, contact).id
    tick()
    assert ledger(contact) == [
        (25.0, f"journey {journey_id} step reward ({enrollment_id}:reward:1)")
    ]
    clock.advance(timedelta(days=1))
    tick()
    with session_scope() as session:
        engine.advance(session, enrollment_id)  # a redelivered task: nothing left to do
    assert [points for points, _ in ledger(contact)] == [25.0, -10.0]
    assert ledger(contact)[1][1] == f"went quiet ({enrollment_id}:penalty:1)"
    assert enrollment_of(contact).status == "completed"
    assert step_details(contact)["penalty"]["points"] == -10.0


def test_a_score_step_run_again_under_its_key_adds_its_points_once(backend: Backend) -> None:
    clock.freeze(T0)
    node = {"id": "reward", "type": "adjust_score", "points": 25}
    journey_id = create_published(
        {"trigger": {"type": "manual"}, "start": "reward", "nodes": [node]}
    )
    contact = make_contact()
    with session_scope() as session:
        enrollment = service.enroll_contact(session, journey_id, contact)
        step = engine.Run(
            id=enrollment.id,
            journey_id=journey_id,
            version_id=enrollment.version_id,
            contact_id=contact,
            status="active",
            current_node="reward",
            next_run_at=None,
            wake_at=None,
            waiting_since=None,
            waiting_for_event=None,
            key=f"{enrollment.id}:reward:1",
        )
    entry_ids = []
    for _ in range(2):  # the step, and the same step retried in a later transaction
        with session_scope() as session:
            outcome = engine.run_node(session, node, [step], clock.now())[step.id]
            entry_ids.append(outcome.detail["entry_id"])
    assert entry_ids[0] == entry_ids[1]
    assert [points for points, _ in ledger(contact)] == [25.0]
    with session_scope() as session:
        assert session.get_one(ContactScore, contact).behavior_score == pytest.approx(25.0)


def test_setting_the_lifecycle_stage_records_each_transition(backend: Backend) -> None:
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "manual"},
        "start": "promote",
        "nodes": [{"id": "promote", "type": "set_lifecycle_stage", "stage": "mql"}],
    }
    journey_id = create_published(definition)
    contacts = {
        stage: make_contact(lifecycle_stage=stage)
        for stage in ("subscriber", "mql", "customer", "disqualified")
    }
    with session_scope() as session:
        for contact in contacts.values():
            service.enroll_contact(session, journey_id, contact)
    assert tick() == 4
    reason = f"journey {journey_id} step promote"
    with session_scope() as session:
        stages = dict(session.execute(select(Contact.id, Contact.lifecycle_stage)).all())
        histories = {
            stage: [
                (t.from_stage, t.to_stage, t.cause, t.reason)
                for t in lifecycle.history(session, contact)
                if t.reason == reason
            ]
            for stage, contact in contacts.items()
        }
    assert set(stages.values()) == {"mql"}
    assert histories == {
        "subscriber": [("subscriber", "mql", "journey", reason)],  # forward: automatic
        "mql": [],  # already there: nothing to record
        "customer": [("customer", "mql", "manual", reason)],  # back: explicit
        "disqualified": [("disqualified", "mql", "manual", reason)],
    }
    assert step_details(contacts["mql"])["promote"] == {
        "from": "mql",
        "to": "mql",
        "changed": False,
    }
    assert step_details(contacts["customer"])["promote"]["changed"] is True


def test_score_and_stage_nodes_are_validated_by_field(backend: Backend) -> None:
    def problems(node: dict[str, Any]) -> dict[str, str]:
        definition = {"trigger": {"type": "manual"}, "start": "n", "nodes": [{"id": "n", **node}]}
        with session_scope() as session, pytest.raises(DefinitionError) as caught:
            validate(session, definition)
        return caught.value.fields

    assert "non-zero" in problems({"type": "adjust_score", "points": 0})["nodes.n.points"]
    assert "non-zero" in problems({"type": "adjust_score", "points": "5"})["nodes.n.points"]
    assert "non-zero" in problems({"type": "adjust_score", "points": 10_001})["nodes.n.points"]
    assert "3 to 200" in problems({"type": "adjust_score", "points": 5, "note": ""})["nodes.n.note"]
    assert (
        "must be one of"
        in problems({"type": "set_lifecycle_stage", "stage": "wizard"})["nodes.n.stage"]
    )


def statements_to_advance(contacts: int, journey: dict[str, Any]) -> int:
    """How many SQL statements one scheduler pass needs for `contacts` enrollments."""
    journey_id = create_published(journey, name=f"batch {contacts}")
    ids = [make_contact({"plan": "pro" if i % 2 else "free"}) for i in range(contacts)]
    for contact in ids[::3]:
        make_event(contact, "Pricing Viewed")
    with session_scope() as session:
        engine.enroll(session, service.get_journey(session, journey_id), ids)
    count = 0

    def counted(*_: Any) -> None:
        nonlocal count
        count += 1

    event.listen(get_engine(), "before_cursor_execute", counted)
    try:
        with session_scope() as session:
            assert engine.run_due(session) == contacts
    finally:
        event.remove(get_engine(), "before_cursor_execute", counted)
    with session_scope() as session:
        finished = session.scalars(
            select(Enrollment.status).where(Enrollment.journey_id == journey_id)
        ).all()
    assert finished == ["completed"] * contacts
    return count


def test_a_batch_advances_with_the_same_statements_for_five_or_fifty(backend: Backend) -> None:
    clock.freeze(T0)
    journey = {
        "trigger": {"type": "manual"},
        "start": "viewed",
        "nodes": [
            {
                "id": "viewed",
                "type": "condition",
                "condition": {"event": "Pricing Viewed", "within_days": 7},
                "yes": "hot",
                "no": "nurtured",
            },
            {"id": "hot", "type": "update_contact", "add_tags": ["hot"], "next": "nurtured"},
            {"id": "nurtured", "type": "update_contact", "traits": {"nurtured": True}},
        ],
    }
    assert statements_to_advance(5, journey) == statements_to_advance(50, journey)
    with session_scope() as session:
        contacts = session.execute(select(Contact.id, Contact.tags, Contact.traits)).all()
    assert len(contacts) == 55 and all(c.traits["nurtured"] is True for c in contacts)
    hot = [c.id for c in contacts if "hot" in c.tags]
    assert len(hot) == 2 + 17  # every third contact viewed pricing
    assert all(("hot", "done") in path_of(contact) for contact in hot)
