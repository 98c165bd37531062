"""Admin API authentication and the keys API: only a live admin API key opens /api/v1, each
role sees what it may, and keys are shown once and stored hashed."""

from __future__ import annotations

import base64
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from core import db
from core.ids import hash_secret
from core.keys import ApiKey, Role
from tests.conftest import make_key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_only_a_live_admin_api_key_opens_the_admin_api(
    client: TestClient, admin_key: str, write_key: str
) -> None:
    url = "/api/v1/contacts"
    assert client.get(url, headers=auth(admin_key)).status_code == 200
    for headers in (
        {},
        auth(write_key),
        auth("nk_not-a-real-key"),
        auth(""),
        {"Authorization": admin_key},
        {"Authorization": "Basic " + base64.b64encode(f"{admin_key}:".encode()).decode()},
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthorized"
    assert client.get(url, headers=auth(write_key)).headers.get("www-authenticate") is None


def test_a_revoked_key_is_refused_at_once(client: TestClient, admin_key: str) -> None:
    created = client.post(
        "/api/v1/keys", json={"name": "crm sync", "role": "marketer"}, headers=auth(admin_key)
    ).json()
    assert client.get("/api/v1/contacts", headers=auth(created["key"])).status_code == 200

    response = client.delete(f"/api/v1/keys/{created['id']}", headers=auth(admin_key))
    assert response.status_code == 204
    response = client.get("/api/v1/contacts", headers=auth(created["key"]))
    assert response.status_code == 401
    listed = {k["id"]: k for k in client.get("/api/v1/keys", headers=auth(admin_key)).json()}
    assert listed[created["id"]]["revoked_at"] is not None
    assert client.delete(f"/api/v1/keys/{created['id']}", headers=auth(admin_key)).status_code == (
        204
    ), "revoking twice is harmless"


def test_keys_are_shown_once_and_stored_hashed(client: TestClient, admin_key: str) -> None:
    response = client.post(
        "/api/v1/keys", json={"name": "  Finance bot ", "role": "finance"}, headers=auth(admin_key)
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["key"].startswith("nk_")
    assert created["key_prefix"] == created["key"][:10]
    assert (created["name"], created["role"]) == ("Finance bot", "finance")

    listed = client.get("/api/v1/keys", headers=auth(admin_key)).json()
    assert {k["role"] for k in listed} == {"admin", "finance"}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert created["key"] not in str(listed)
    with db.session_scope() as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.name == "Finance bot")).one()
        assert stored.key_hash == hash_secret(created["key"])


def test_keys_api_is_for_admins_only(client: TestClient, admin_key: str) -> None:
    admin_id = client.get("/api/v1/keys", headers=auth(admin_key)).json()[0]["id"]
    for role in (Role.marketer, Role.manager, Role.rep, Role.finance):
        key = make_key(role)
        requests: list[tuple[str, str, Any]] = [
            ("GET", "/api/v1/keys", None),
            ("POST", "/api/v1/keys", {"name": "x", "role": "admin"}),
            ("DELETE", f"/api/v1/keys/{admin_id}", None),
        ]
        for method, url, body in requests:
            response = client.request(method, url, json=body, headers=auth(key))
            assert response.status_code == 403, (role, method, url)
            assert response.json()["error"]["code"] == "forbidden"
    assert client.get("/api/v1/contacts", headers=auth(admin_key)).status_code == 200


def test_keys_api_rejects_bad_input(client: TestClient, admin_key: str) -> None:
    for body, field in (
        ({"name": "x", "role": "owner"}, "role"),
        ({"name": "", "role": "admin"}, "name"),
        ({"name": "x" * 201, "role": "admin"}, "name"),
        ({"role": "admin"}, "name"),
        ({"name": "a\x00b", "role": "admin"}, "name"),
    ):
        response = client.post("/api/v1/keys", json=body, headers=auth(admin_key))
        assert response.status_code == 422, body
        assert field in response.json()["error"]["fields"], body
    response = client.delete("/api/v1/keys/not-a-uuid", headers=auth(admin_key))
    assert response.status_code == 422
    assert "key_id" in response.json()["error"]["fields"]
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.delete(f"/api/v1/keys/{missing}", headers=auth(admin_key)).status_code == 404
    assert len(client.get("/api/v1/keys", headers=auth(admin_key)).json()) == 1


def test_the_last_admin_key_cannot_be_revoked(client: TestClient, admin_key: str) -> None:
    [mine] = client.get("/api/v1/keys", headers=auth(admin_key)).json()
    response = client.delete(f"/api/v1/keys/{mine['id']}", headers=auth(admin_key))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_admin_key"

    second = client.post(
        "/api/v1/keys", json={"name": "second admin", "role": "admin"}, headers=auth(admin_key)
    ).json()
    assert client.delete(f"/api/v1/keys/{mine['id']}", headers=auth(admin_key)).status_code == 204
    assert client.get("/api/v1/keys", headers=auth(admin_key)).status_code == 401
    assert client.get("/api/v1/keys", headers=auth(second["key"])).status_code == 200
