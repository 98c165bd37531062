"""Entry triggers: one batch of changes starts exactly the published journeys whose event
(by name or call type, with property filters), segment or trait-change trigger it meets; the
in-memory index follows publishing, pausing and archiving. Page views, which carry no event
name, start page triggers and end waits for a page view, through the real ingest path."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from capture.models import Contact, Event, Identity
from core import feed
from core.clock import clock
from core.db import session_scope
from journeys import segments, service
from journeys.definition import DefinitionError, validate
from journeys.models import Enrollment
from scoring import scorer
from tests.conftest import Backend, drain
from tests.journeys.conftest import T0, dispatch, draft, make_contact, make_event, publish
from tests.journeys.test_engine import (
    create_published,
    enrollment_of,
    last_event_id,
    path_of,
    tick,
)


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


def test_segment_entry_and_exit_start_only_their_journeys(backend: Backend) -> None:
    clock.freeze(T0)
    with session_scope() as session:
        vip = segments.create_segment(session, "VIP", "static", None).id
        other = segments.create_segment(session, "Other", "static", None).id
    journey = create_published(entry({"type": "segment_entry", "segment_id": str(vip)}))
    other_journey = create_published(entry({"type": "segment_entry", "segment_id": str(other)}))
    left_vip = create_published(entry({"type": "segment_exit", "segment_id": str(vip)}))
    first, second = make_contact(), make_contact()
    with session_scope() as session:
        segments.add_members(session, vip, [first])
        segments.add_members(session, other, [second])
    dispatch()
    assert enrolled() == {(journey, first), (other_journey, second)}
    with session_scope() as session:
        segments.remove_members(session, vip, [first])
        segments.remove_members(session, other, [second])
    dispatch()
    assert enrolled() == {(journey, first), (other_journey, second), (left_vip, first)}


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
        ({"type": "event"}, "trigger.event"),
        ({"type": "event", "event": ""}, "trigger.event"),
        ({"type": "segment_exit", "segment_id": str(uuid.UUID(int=5))}, "trigger.segment_id"),
        ({"type": "event", "call": "click"}, "trigger.call"),
        (
            {"type": "event", "call": "page", "where": [{"field": "host", "op": "eq", "value": 1}]},
            "trigger.where[0].field",
        ),
    ],
)
def test_invalid_triggers_name_the_field(backend: Backend, trigger: Any, path: str) -> None:
    with session_scope() as session, pytest.raises(DefinitionError) as caught:
        validate(session, entry(trigger))
    assert path in caught.value.fields


PRICING_VIEW = {
    "type": "event",
    "call": "page",
    "where": [{"field": "url", "op": "contains", "value": "/pricing"}],
}


def test_a_page_view_without_a_name_starts_a_page_trigger(
    backend: Backend, client: TestClient, write_key: str
) -> None:
    pricing = create_published(entry(PRICING_VIEW))
    named_page = create_published(entry({"type": "event", "event": "Pricing", "call": "page"}))
    any_pricing = create_published(entry({"type": "event", "event": "Pricing"}))
    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}

    def send(kind: str, visitor: str, url: str, **fields: Any) -> None:
        message = {"anonymousId": visitor, "context": {"page": {"url": url}}, **fields}
        assert client.post(f"/v1/{kind}", json=message, headers=auth).status_code == 200

    site = "https://www.example.com"
    send("page", "reader", f"{site}/blog/lead-nurturing")
    send("page", "buyer", f"{site}/pricing?plan=team")
    send("page", "titled", f"{site}/plans", name="Pricing")
    send("track", "clicker", f"{site}/pricing", event="Pricing")
    assert drain() == 4
    dispatch()

    with session_scope() as session:
        contacts = dict(session.execute(select(Identity.value, Identity.contact_id)).all())
        unnamed = session.scalar(select(Event.name).where(Event.contact_id == contacts["buyer"]))
    assert unnamed is None  # what the trigger index could not match by name
    assert enrolled() == {
        (pricing, contacts["buyer"]),
        (named_page, contacts["titled"]),
        (any_pricing, contacts["titled"]),
        (any_pricing, contacts["clicker"]),
    }


def test_a_wait_for_a_page_view_ends_when_the_page_is_viewed(backend: Backend) -> None:
    clock.freeze(T0)
    journey = create_published(
        {
            "trigger": {"type": "manual"},
            "start": "pricing",
            "nodes": [
                {
                    "id": "pricing",
                    **PRICING_VIEW,
                    "type": "wait_for_event",
                    "timeout": {"days": 7},
                    "matched": "hot",
                    "timed_out": "end",
                },
                {"id": "hot", "type": "update_contact", "add_tags": ["hot"], "next": "end"},
                {"id": "end", "type": "exit"},
            ],
        }
    )
    contact = make_contact()
    with session_scope() as session:
        service.enroll_contact(session, journey, contact)
    tick()
    assert enrollment_of(contact).waiting_for_event == "call:page"

    def view(url: str) -> None:
        make_event(contact, None, type="page", url=url)
        payload = {"event_id": last_event_id(), "type": "page", "name": None}
        publish(feed.EVENT_STORED, contact, payload)

    view("https://www.example.com/blog")
    tick()
    assert enrollment_of(contact).status == "waiting"
    view("https://www.example.com/pricing")
    tick()
    assert enrollment_of(contact).status == "exited"
    assert path_of(contact) == [
        ("pricing", "waiting"),
        ("pricing", "done"),
        ("hot", "done"),
        ("end", "done"),
    ]
    with session_scope() as session:
        assert session.get_one(Contact, contact).tags == ["hot"]


def test_a_dry_run_takes_made_up_page_views(backend: Backend, client: TestClient) -> None:
    definition = {
        "trigger": PRICING_VIEW,
        "start": "viewed",
        "nodes": [
            {
                "id": "viewed",
                "type": "condition",
                "condition": {
                    "type": "page",
                    "where": [{"field": "path", "op": "eq", "value": "/pricing/team"}],
                },
                "yes": "hot",
                "no": "cold",
            },
            {"id": "hot", "type": "exit"},
            {"id": "cold", "type": "exit"},
        ],
    }
    journey_id, headers = draft(client, definition)
    viewed = {"contact": {"events": [{"type": "page", "path": "/pricing/team", "days_ago": 1}]}}
    answer = client.post(f"/api/v1/journeys/{journey_id}/dry-run", json=viewed, headers=headers)
    assert answer.json()["entry"] == "enters when a page call with property filters is stored"
    assert [line["node"] for line in answer.json()["path"]] == ["viewed", "hot"]

    nameless = {"contact": {"events": [{"type": "track"}]}}
    refused = client.post(f"/api/v1/journeys/{journey_id}/dry-run", json=nameless, headers=headers)
    assert refused.status_code == 422
    assert "needs a name" in str(refused.json()["error"]["fields"])


def test_a_score_crossing_enters_a_score_segment_and_starts_its_journey(backend: Backend) -> None:
    """A score change as an entry trigger: a dynamic segment on `score` and a segment_entry
    trigger. Segments and triggers run after scoring has scored the same change."""
    clock.freeze(T0)
    scorer.subscribe()
    with session_scope() as session:
        scorer.scoring_settings(session)
        hot = segments.create_segment(
            session, "Hot", "dynamic", {"field": "score", "op": "gte", "value": 50}
        ).id
    journey = create_published(entry({"type": "segment_entry", "segment_id": str(hot)}))
    keen, browsing = make_contact(), make_contact()
    stored(keen, "form_submitted")  # +50 under the default rules
    stored(browsing, "email_clicked")  # +5
    dispatch()
    assert enrolled() == {(journey, keen)}
