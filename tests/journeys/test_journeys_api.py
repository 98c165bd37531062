"""The journeys admin API: a marketer builds, validates, publishes, edits and watches a
journey; bad definitions are a 422 naming node and field and change nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from capture.models import Contact, Event
from core.clock import clock
from core.db import session_scope
from core.keys import Role
from tests.conftest import Backend, make_key
from tests.journeys.conftest import T0, make_contact
from tests.journeys.test_engine import event, make_template, nurture, tick


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_marketer_builds_publishes_and_watches_a_journey(
    backend: Backend, client: TestClient
) -> None:
    clock.freeze(T0)
    headers = auth(make_key(Role.marketer))
    definition = nurture(make_template(), make_template(), make_template("sms"))
    broken = {**definition, "nodes": [*definition["nodes"][:-1], {"id": "done", "type": "warp"}]}

    checked = client.post("/api/v1/journeys/validate", json={"definition": broken}, headers=headers)
    assert checked.status_code == 422
    assert "unknown node type 'warp'" in checked.json()["error"]["fields"]["nodes.done.type"]

    created = client.post(
        "/api/v1/journeys", json={"name": "Demo nurture", "definition": broken}, headers=headers
    )
    assert created.status_code == 201
    journey = created.json()
    assert journey["status"] == "draft"
    refused = client.post(f"/api/v1/journeys/{journey['id']}/publish", headers=headers)
    assert refused.status_code == 422 and "nodes.done.type" in refused.json()["error"]["fields"]
    assert client.get(f"/api/v1/journeys/{journey['id']}", headers=headers).json()["status"] == (
        "draft"
    )

    client.put(
        f"/api/v1/journeys/{journey['id']}", json={"definition": definition}, headers=headers
    )
    published = client.post(f"/api/v1/journeys/{journey['id']}/publish", headers=headers)
    assert published.status_code == 201 and published.json()["number"] == 1

    contact = make_contact(email="lead@example.com")
    enrolled = client.post(
        f"/api/v1/journeys/{journey['id']}/enrollments",
        json={"contact_id": str(contact)},
        headers=headers,
    )
    assert enrolled.status_code == 201, enrolled.text
    twice = client.post(
        f"/api/v1/journeys/{journey['id']}/enrollments",
        json={"contact_id": str(contact)},
        headers=headers,
    )
    assert twice.status_code == 422
    assert "already in this journey" in twice.json()["error"]["fields"]["contact_id"]
    tick()
    clock.advance(timedelta(days=2))
    tick()
    clock.advance(timedelta(days=1))
    event(contact, "Page Viewed", url="https://example.com/pricing")
    tick()

    enrollment = client.get(
        f"/api/v1/journeys/{journey['id']}/enrollments/{enrolled.json()['id']}", headers=headers
    ).json()
    assert enrollment["status"] == "completed"
    assert [s["node_id"] for s in enrollment["steps"] if s["result"] != "waiting"] == [
        "welcome",
        "pause",
        "clicked",
        "remind",
        "pricing",
        "sales",
    ]
    handed_off = enrollment["steps"][-1]
    assert handed_off["result"] == "done"
    # No reps exist, so handoff keeps the lead waiting for the first eligible rep.
    assert (handed_off["detail"]["lead_status"], handed_off["detail"]["rep_id"]) == (
        "waiting",
        None,
    )
    stats = client.get(f"/api/v1/journeys/{journey['id']}/stats", headers=headers).json()
    assert (stats["enrolled"], stats["completed"]) == (1, 1)
    assert stats["nodes"]["clicked"]["branches"] == {"no": 1}

    paused = client.post(f"/api/v1/journeys/{journey['id']}/pause", headers=headers)
    assert paused.json()["status"] == "paused"
    while_paused = client.post(f"/api/v1/journeys/{journey['id']}/publish", headers=headers)
    assert while_paused.status_code == 422
    assert "resume it first" in while_paused.json()["error"]["fields"]["status"]
    versions = client.get(f"/api/v1/journeys/{journey['id']}/versions", headers=headers).json()
    assert [v["number"] for v in versions] == [1]


def test_segment_enrollment_and_roles(backend: Backend, client: TestClient) -> None:
    clock.freeze(T0)
    headers = auth(make_key(Role.marketer))
    contacts = [make_contact({"plan": "pro"}) for _ in range(3)]
    segment = client.post(
        "/api/v1/segments",
        json={"name": "Pro", "condition": {"field": "traits.plan", "op": "eq", "value": "pro"}},
        headers=headers,
    ).json()
    definition = {
        "trigger": {"type": "manual"},
        "start": "tag",
        "nodes": [{"id": "tag", "type": "update_contact", "add_tags": ["nurtured"]}],
    }
    journey = client.post(
        "/api/v1/journeys", json={"name": "Tag", "definition": definition}, headers=headers
    ).json()
    client.post(f"/api/v1/journeys/{journey['id']}/publish", headers=headers)
    enrolled = client.post(
        f"/api/v1/journeys/{journey['id']}/enrollments",
        json={"segment_id": segment["id"]},
        headers=headers,
    )
    assert enrolled.json() == {"enrolled": len(contacts)}
    neither = client.post(f"/api/v1/journeys/{journey['id']}/enrollments", json={}, headers=headers)
    assert neither.status_code == 422

    rep = auth(make_key(Role.rep))
    assert client.get("/api/v1/journeys", headers=rep).status_code == 403
    missing = client.get(f"/api/v1/journeys/{uuid.uuid4()}", headers=headers)
    assert missing.status_code == 404


def test_dry_run_shows_the_path_and_why_without_side_effects(
    backend: Backend, client: TestClient
) -> None:
    clock.freeze(T0)
    headers = auth(make_key(Role.marketer))
    definition = nurture(make_template(), make_template(), make_template("sms"))
    journey = client.post(
        "/api/v1/journeys", json={"name": "Nurture", "definition": definition}, headers=headers
    ).json()
    clicked = {
        "contact": {
            "traits": {"plan": "pro"},
            "events": [{"name": "Email Clicked", "days_ago": 1}],
        }
    }
    path = client.post(
        f"/api/v1/journeys/{journey['id']}/dry-run", json=clicked, headers=headers
    ).json()["path"]
    assert [line["node"] for line in path] == [
        "welcome",
        "pause",
        "clicked",
        "text",
        "pricing",
        "done",
    ]
    assert path[2]["why"] == "the condition is met"
    assert "Page Viewed" in path[4]["why"]

    real = make_contact(email="real@example.com")
    path = client.post(
        f"/api/v1/journeys/{journey['id']}/dry-run",
        json={"contact_id": str(real)},
        headers=headers,
    ).json()["path"]
    assert path[2] == {"node": "clicked", "type": "condition", "why": "the condition is not met"}
    assert path[3]["node"] == "remind"

    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 1
        assert session.scalar(select(func.count()).select_from(Event)) == 0
    stats = client.get(f"/api/v1/journeys/{journey['id']}/stats", headers=headers).json()
    assert stats["enrolled"] == 0
