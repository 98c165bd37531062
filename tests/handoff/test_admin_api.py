"""Teams, reps and routing rules through the admin API, with validation and role checks."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient

from core.keys import Role
from tests.conftest import make_key
from tests.handoff.conftest import auth, make_contact, make_rep, route


def test_admin_creates_a_team_and_a_rep_with_canonical_territories(
    client: TestClient, admin_key: str
) -> None:
    team = client.post(
        "/api/v1/handoff/teams", json={"name": "West", "sla_minutes": 20}, headers=auth(admin_key)
    )
    assert team.status_code == 201, team.text
    rep = client.post(
        "/api/v1/handoff/reps",
        json={
            "name": "Li Wei",
            "team_id": team.json()["id"],
            "timezone": "Asia/Shanghai",
            "work_days": [5, 1, 2, 3, 4],
            "territories": [
                {"kind": "province", "name": "重庆市"},
                {"kind": "city", "name": "成都"},
                {"kind": "country", "name": "sg"},
            ],
            "industries": ["Manufacturing "],
            "capacity": 5,
            "weight": 3,
        },
        headers=auth(admin_key),
    )
    assert rep.status_code == 201, rep.text
    body = rep.json()
    assert body["territories"] == [
        {"kind": "province", "name": "Chongqing"},
        {"kind": "city", "name": "成都"},
        {"kind": "country", "name": "SG"},
    ]
    assert body["work_days"] == [1, 2, 3, 4, 5]
    assert body["industries"] == ["manufacturing"]
    off = client.patch(
        f"/api/v1/handoff/reps/{body['id']}", json={"on_duty": False}, headers=auth(admin_key)
    )
    assert off.status_code == 200 and off.json()["on_duty"] is False
    listed = client.get("/api/v1/handoff/reps", headers=auth(admin_key)).json()
    assert [r["name"] for r in listed] == ["Li Wei"]


def test_bad_rep_fields_are_named_and_nothing_is_stored(client: TestClient, admin_key: str) -> None:
    bad = {
        "name": "X",
        "timezone": "Mars/Olympus",
        "work_start": "25:00",
        "territories": [{"kind": "province", "name": "Atlantis"}],
        "capacity": -1,
        "weight": 0,
    }
    answer = client.post("/api/v1/handoff/reps", json=bad, headers=auth(admin_key))
    assert answer.status_code == 422
    fields = answer.json()["error"]["fields"]
    assert {"timezone", "work_start", "territories.0", "capacity", "weight"} <= set(fields)
    order = client.post(
        "/api/v1/handoff/reps",
        json={"name": "Y", "work_start": "18:00", "work_end": "09:00"},
        headers=auth(admin_key),
    )
    assert order.status_code == 422
    unknown_team = client.post(
        "/api/v1/handoff/reps",
        json={"name": "Z", "team_id": "00000000-0000-0000-0000-000000000001"},
        headers=auth(admin_key),
    )
    assert unknown_team.status_code == 422
    assert "team_id" in unknown_team.json()["error"]["fields"]
    assert client.get("/api/v1/handoff/reps", headers=auth(admin_key)).json() == []


def test_rules_are_validated_and_listed_in_order(client: TestClient, admin_key: str) -> None:
    for name, position, kind in (("pool", 30, "pool"), ("owner", 10, "existing_owner")):
        answer = client.post(
            "/api/v1/handoff/rules",
            json={"name": name, "position": position, "kind": kind},
            headers=auth(admin_key),
        )
        assert answer.status_code == 201, answer.text
    bad = client.post(
        "/api/v1/handoff/rules",
        json={
            "name": "x",
            "position": 1,
            "kind": "teleport",
            "condition": {"and": [{"field": "traits.plan", "op": "sounds_like", "value": 1}]},
        },
        headers=auth(admin_key),
    )
    assert bad.status_code == 422
    fields = bad.json()["error"]["fields"]
    assert set(fields) == {"kind", "condition"}
    assert "and[0].op" in fields["condition"]
    listed = client.get("/api/v1/handoff/rules", headers=auth(admin_key)).json()
    assert [r["name"] for r in listed] == ["owner", "pool"]


def test_only_admins_manage_teams_reps_and_rules(client: TestClient) -> None:
    for role in (Role.marketer, Role.manager, Role.rep):
        key = make_key(role)
        for path in ("teams", "reps", "rules"):
            assert client.get(f"/api/v1/handoff/{path}", headers=auth(key)).status_code == 403
    assert client.get("/api/v1/handoff/reps").status_code == 401


def test_a_disabled_rule_is_passed_over(client: TestClient, admin_key: str, now: datetime) -> None:
    make_rep("Anyone")
    rule = client.post(
        "/api/v1/handoff/rules",
        json={"name": "pool", "position": 1, "kind": "pool"},
        headers=auth(admin_key),
    ).json()
    off = client.patch(
        f"/api/v1/handoff/rules/{rule['id']}", json={"enabled": False}, headers=auth(admin_key)
    )
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert route(make_contact()).status == "waiting"
    client.patch(
        f"/api/v1/handoff/rules/{rule['id']}", json={"enabled": True}, headers=auth(admin_key)
    )
    assert route(make_contact()).status == "assigned"
    bad = client.patch(
        f"/api/v1/handoff/rules/{rule['id']}", json={"kind": "pool"}, headers=auth(admin_key)
    )
    assert bad.status_code == 422
