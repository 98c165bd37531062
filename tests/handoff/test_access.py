"""A rep sees only their own leads, a manager their team's, an admin every lead."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient

from core.keys import Role
from tests.conftest import make_key
from tests.handoff.conftest import (
    auth,
    key_for,
    make_contact,
    make_rep,
    make_rule,
    make_team,
    route,
)


def test_reps_cannot_read_or_act_on_each_others_leads(
    client: TestClient, admin_key: str, now: datetime
) -> None:
    make_rule("territory", 10, "territory")
    east, west = make_team("East"), make_team("West")
    alice = make_rep("Alice", team_id=east, territories=[{"kind": "province", "name": "Zhejiang"}])
    bob = make_rep("Bob", team_id=west, territories=[{"kind": "province", "name": "Sichuan"}])
    boss = make_rep("Boss", team_id=east, role="manager")
    alices = route(make_contact({"province": "Zhejiang"}))
    bobs = route(make_contact({"province": "Sichuan"}))
    assert (alices.rep_id, bobs.rep_id) == (alice, bob)
    alice_key, manager_key = key_for(alice), key_for(boss)

    def ids(key: str) -> set[str]:
        answer = client.get("/api/v1/handoff/leads", headers=auth(key))
        assert answer.status_code == 200, answer.text
        return {row["id"] for row in answer.json()}

    assert ids(alice_key) == {str(alices.id)}
    assert ids(manager_key) == {str(alices.id)}
    assert ids(admin_key) == {str(alices.id), str(bobs.id)}
    for path in ("", "/dossier"):
        guessed = client.get(f"/api/v1/handoff/leads/{bobs.id}{path}", headers=auth(alice_key))
        assert guessed.status_code == 404
        assert (
            client.get(
                f"/api/v1/handoff/leads/{bobs.id}{path}", headers=auth(manager_key)
            ).status_code
            == 404
        )
    stolen = client.post(f"/api/v1/handoff/leads/{bobs.id}/accept", headers=auth(alice_key))
    assert stolen.status_code == 404
    own = client.get(f"/api/v1/handoff/leads/{alices.id}", headers=auth(alice_key))
    assert own.status_code == 200 and own.json()["decisions"][0]["rule_name"] == "territory"


def test_keys_not_linked_to_a_rep_see_nothing(client: TestClient, now: datetime) -> None:
    for role in (Role.rep, Role.manager, Role.marketer, Role.finance):
        answer = client.get("/api/v1/handoff/leads", headers=auth(make_key(role)))
        assert answer.status_code == 403


def test_route_by_hand_needs_a_marketer_manager_or_admin(
    client: TestClient, admin_key: str, now: datetime
) -> None:
    make_rule("pool", 10, "pool")
    rep = make_rep("Rep")
    contact = str(make_contact())
    denied = client.post(
        "/api/v1/handoff/leads", json={"contact_id": contact}, headers=auth(key_for(rep))
    )
    assert denied.status_code == 403
    routed = client.post(
        "/api/v1/handoff/leads", json={"contact_id": contact}, headers=auth(make_key(Role.marketer))
    )
    assert routed.status_code == 201 and routed.json()["rep_id"] == str(rep)
    again = client.post(
        "/api/v1/handoff/leads", json={"contact_id": contact}, headers=auth(admin_key)
    )
    assert again.json()["id"] == routed.json()["id"]
    missing = client.post(
        "/api/v1/handoff/leads",
        json={"contact_id": "00000000-0000-0000-0000-000000000009"},
        headers=auth(admin_key),
    )
    assert missing.status_code == 422 and "contact_id" in missing.json()["error"]["fields"]


def test_a_manager_outside_any_team_sees_no_teamless_leads(
    client: TestClient, now: datetime
) -> None:
    make_rule("nobody", 10, "fallback")
    loner = make_rep("Loner", role="manager")
    queued = route(make_contact())
    assert (queued.status, queued.team_id) == ("queued", None)
    answer = client.get("/api/v1/handoff/leads", headers=auth(key_for(loner)))
    assert answer.status_code == 200 and answer.json() == []
    guessed = client.get(f"/api/v1/handoff/leads/{queued.id}", headers=auth(key_for(loner)))
    assert guessed.status_code == 404


def test_a_retried_route_request_with_its_idempotency_key_routes_once(
    client: TestClient, admin_key: str, now: datetime
) -> None:
    make_rule("pool", 10, "pool")
    make_rep("Rep")
    headers = {**auth(admin_key), "Idempotency-Key": "crm-sync-7"}
    first = client.post(
        "/api/v1/handoff/leads", json={"contact_id": str(make_contact())}, headers=headers
    )
    again = client.post(
        "/api/v1/handoff/leads", json={"contact_id": str(make_contact())}, headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
