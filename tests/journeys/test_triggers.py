"""Entry triggers: one batch of changes starts exactly the published journeys whose event
(with property filters), segment or trait-change trigger it meets; the in-memory index
follows publishing, pausing and archiving."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from core import feed
from core.clock import clock
from core.db import session_scope
from journeys import segments, service
from journeys.definition import DefinitionError, validate
from journeys.models import Enrollment
from tests.conftest import Backend
from tests.journeys.conftest import T0, dispatch, make_contact, make_event, publish
from tests.journeys.test_engine import create_published, last_event_id


def entry(trigger: dict[str, Any]) -> dict[str, Any]:
    return {"trigger": trigger, "start": "end", "nodes": [{"id": "end", "type": "exit"}]}


def enrolled() -> set[tuple[uuid.UUID, uuid.UUID]]:
    with session_scope() as session:
        rows = session.execute(select(Enrollment.journey_id, Enrollment.contact_id)).all()
        return {(journey_id, contact_id) for journey_id, contact_id in rows}


def stored(contact_id: uuid.UUID, name: str, properties: dict[str, Any] | None = None) -> None:
    make_event(contact_id, name, properties)
    publish(feed.EVENT_STORED, contact_id, {"event_id": last_event_id(), "name": name})


def test_one_batch_starts_only_the_journeys_whose_trigger_it_meets(backend: Backend) -> None:
    clock.freeze(T0)
    demo = create_published(
        entry(
            {
                "type": "event",
                "event": "Form Submitted",
                "where": [{"field": "properties.form_id", "op": "eq", "value": "demo"}],
            }
        )
    )
    any_form = create_published(entry({"type": "event", "event": "Form Submitted"}))
    big_trial = create_published(
        entry(
            {
                "type": "event",
                "event": "Started Trial",
                "where": [{"field": "properties.seats", "op": "gte", "value": 10}],
            }
        )
    )
    paused = create_published(entry({"type": "event", "event": "Form Submitted"}))
    archived = create_published(entry({"type": "event", "event": "Form Submitted"}))
    with session_scope() as session:
        service.pause(session, paused)
        service.archive(session, archived)
    alice, bob, carol = make_contact(), make_contact(), make_contact()
    stored(alice, "Form Submitted", {"form_id": "demo"})
    stored(bob, "Form Submitted", {"form_id": "newsletter"})
    stored(carol, "Started Trial", {"seats": 25})
    stored(bob, "Started Trial", {"seats": 3})
    stored(bob, "Started Trial", {"seats": "many"})
    dispatch()
    assert enrolled() == {(demo, alice), (any_form, alice), (any_form, bob), (big_trial, carol)}

    with session_scope() as session:
        service.resume(session, paused)
    dave = make_contact()
    stored(dave, "Form Submitted", {"form_id": "trial"})
    dispatch()
    assert {j for j, c in enrolled() if c == dave} == {any_form, paused}


def test_a_new_version_changes_the_trigger_at_once(backend: Backend) -> None:
    clock.freeze(T0)
    journey = create_published(entry({"type": "event", "event": "Form Submitted"}))
    with session_scope() as session:
        service.update_draft(
            session, journey, None, entry({"type": "event", "event": "Requested Demo"})
        )
        service.publish(session, journey)
    old, new = make_contact(), make_contact()
    stored(old, "Form Submitted")
    stored(new, "Requested Demo")
    dispatch()
    assert enrolled() == {(journey, new)}


def test_trait_change_trigger_with_a_condition(backend: Backend) -> None:
    clock.freeze(T0)
    became_pro = create_published(
        entry(
            {
                "type": "trait_change",
                "trait": "plan",
                "condition": {"field": "traits.plan", "op": "eq", "value": "pro"},
            }
        )
    )
    any_stage = create_published(entry({"type": "trait_change", "trait": "lifecycle_stage"}))
    upgraded = make_contact({"plan": "pro"})
    downgraded = make_contact({"plan": "free"})
    renamed = make_contact({"plan": "pro", "name": "Li"})
    promoted = make_contact(lifecycle_stage="mql")
    publish(feed.TRAITS_CHANGED, upgraded, {"changed": {"plan": {"old": "free", "new": "pro"}}})
    publish(feed.TRAITS_CHANGED, downgraded, {"changed": {"plan": {"old": "pro", "new": "free"}}})
    publish(feed.TRAITS_CHANGED, renamed, {"changed": {"name": {"old": "Wang", "new": "Li"}}})
    publish(feed.TRAITS_CHANGED, promoted, {"changed": ["lifecycle_stage"]})
    dispatch()
    assert enrolled() == {(became_pro, upgraded), (any_stage, promoted)}


def test_segment_entry_starts_only_its_journeys(backend: Backend) -> None:
    clock.freeze(T0)
    with session_scope() as session:
        vip = segments.create_segment(session, "VIP", "static", None).id
        other = segments.create_segment(session, "Other", "static", None).id
    journey = create_published(entry({"type": "segment_entry", "segment_id": str(vip)}))
    other_journey = create_published(entry({"type": "segment_entry", "segment_id": str(other)}))
    first, second = make_contact(), make_contact()
    with session_scope() as session:
        segments.add_members(session, vip, [first])
        segments.add_members(session, other, [second])
    dispatch()
    assert enrolled() == {(journey, first), (other_journey, second)}


@pytest.mark.parametrize(
    ("trigger", "path"),
    [
        ({"type": "trait_change"}, "trigger.trait"),
        ({"type": "trait_change", "trait": "a b"}, "trigger.trait"),
        (
            {"type": "trait_change", "trait": "plan", "condition": {"field": "shoe", "op": "eq"}},
            "trigger.condition.field",
        ),
        ({"type": "date"}, "trigger.type"),
    ],
)
def test_invalid_triggers_name_the_field(backend: Backend, trigger: Any, path: str) -> None:
    with session_scope() as session, pytest.raises(DefinitionError) as caught:
        validate(session, entry(trigger))
    assert path in caught.value.fields
