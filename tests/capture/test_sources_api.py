"""The sources admin API: write keys shown once, origins validated, rotation and disabling
take effect on the tracking API."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.keys import Role
from tests.conftest import make_key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def track(client: TestClient, write_key: str, origin: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    if origin:
        headers["Origin"] = origin
    body = {"userId": "u1", "event": "Tested"}
    return client.post("/v1/track", json=body, headers=headers).status_code


def create(client: TestClient, admin_key: str, **body: Any) -> Any:
    body = {"name": "Marketing site", **body}
    response = client.post("/api/v1/sources", json=body, headers=auth(admin_key))
    assert response.status_code == 201, response.text
    return response.json()


def test_create_shows_the_write_key_once_and_it_captures(
    client: TestClient, admin_key: str
) -> None:
    created = create(
        client,
        admin_key,
        allowed_origins=["HTTPS://WWW.Example.com/", "http://localhost:3000"],
        honor_do_not_track=True,
    )
    assert created["write_key"].startswith("wk_")
    assert created["write_key_prefix"] == created["write_key"][:10]
    assert created["allowed_origins"] == ["https://www.example.com", "http://localhost:3000"]
    assert created["honor_do_not_track"] is True
    assert track(client, created["write_key"], origin="https://www.example.com") == 200

    listed = client.get("/api/v1/sources", headers=auth(admin_key)).json()
    detail = client.get(f"/api/v1/sources/{created['id']}", headers=auth(admin_key)).json()
    assert [s["id"] for s in listed] == [created["id"]]
    for shown in (listed[0], detail):
        assert "write_key" not in shown
        assert "write_key_hash" not in shown
        assert created["write_key"] not in str(shown)
        assert shown["write_key_prefix"] == created["write_key_prefix"]


@pytest.mark.parametrize(
    "origin",
    [
        "ftp://example.com",
        "example.com",
        "https://",
        "https://example.com/path",
        "https://example.com?q=1",
        "https://user:pw@example.com",
        "https://example.com:99999",
        "*",
    ],
)
def test_create_refuses_what_is_not_an_http_origin(
    client: TestClient, admin_key: str, origin: str
) -> None:
    response = client.post(
        "/api/v1/sources",
        json={"name": "site", "allowed_origins": ["https://ok.example.com", origin]},
        headers=auth(admin_key),
    )
    assert response.status_code == 422, response.text
    assert "allowed_origins.1" in response.json()["error"]["fields"]
    assert client.get("/api/v1/sources", headers=auth(admin_key)).json() == []


def test_patch_changes_origins_and_the_tracking_api_follows(
    client: TestClient, admin_key: str
) -> None:
    created = create(client, admin_key, allowed_origins=["https://a.example.com"])
    key = created["write_key"]
    assert track(client, key, origin="https://a.example.com") == 200
    assert track(client, key, origin="https://b.example.com") == 403

    response = client.patch(
        f"/api/v1/sources/{created['id']}",
        json={"name": "Renamed", "allowed_origins": ["https://B.example.com"]},
        headers=auth(admin_key),
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Renamed"
    assert response.json()["allowed_origins"] == ["https://b.example.com"]
    assert track(client, key, origin="https://b.example.com") == 200
    assert track(client, key, origin="https://a.example.com") == 403

    for body, field in (
        ({"allowed_origins": ["nope"]}, "allowed_origins.0"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"write_key_hash": "x"}, "write_key_hash"),
    ):
        response = client.patch(
            f"/api/v1/sources/{created['id']}", json=body, headers=auth(admin_key)
        )
        assert response.status_code == 422, body
        assert field in response.json()["error"]["fields"], body
    detail = client.get(f"/api/v1/sources/{created['id']}", headers=auth(admin_key)).json()
    assert (detail["name"], detail["allowed_origins"]) == ("Renamed", ["https://b.example.com"])


def test_rotating_the_key_retires_the_old_one(client: TestClient, admin_key: str) -> None:
    created = create(client, admin_key)
    assert track(client, created["write_key"]) == 200

    response = client.post(f"/api/v1/sources/{created['id']}/rotate-key", headers=auth(admin_key))
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["write_key"] != created["write_key"]
    assert rotated["write_key_prefix"] == rotated["write_key"][:10]
    assert track(client, created["write_key"]) == 401
    assert track(client, rotated["write_key"]) == 200


def test_delete_disables_the_source(client: TestClient, admin_key: str) -> None:
    created = create(client, admin_key)
    assert track(client, created["write_key"]) == 200
    url = f"/api/v1/sources/{created['id']}"

    assert client.delete(url, headers=auth(admin_key)).status_code == 204
    assert track(client, created["write_key"]) == 401
    detail = client.get(url, headers=auth(admin_key)).json()
    assert detail["disabled_at"] is not None
    assert client.delete(url, headers=auth(admin_key)).status_code == 204
    response = client.post(f"{url}/rotate-key", headers=auth(admin_key))
    assert response.status_code == 409


def test_unknown_or_malformed_source_ids(client: TestClient, admin_key: str) -> None:
    missing = "/api/v1/sources/00000000-0000-0000-0000-000000000000"
    assert client.get(missing, headers=auth(admin_key)).status_code == 404
    assert client.patch(missing, json={}, headers=auth(admin_key)).status_code == 404
    assert client.delete(missing, headers=auth(admin_key)).status_code == 404
    assert client.post(f"{missing}/rotate-key", headers=auth(admin_key)).status_code == 404
    response = client.get("/api/v1/sources/xyz", headers=auth(admin_key))
    assert response.status_code == 422
    assert "source_id" in response.json()["error"]["fields"]


def test_sources_are_for_admins_only(client: TestClient, admin_key: str, write_key: str) -> None:
    created = create(client, admin_key)
    url = f"/api/v1/sources/{created['id']}"
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/sources", None),
        ("POST", "/api/v1/sources", {"name": "x"}),
        ("GET", url, None),
        ("PATCH", url, {"name": "x"}),
        ("POST", f"{url}/rotate-key", None),
        ("DELETE", url, None),
    ]
    for role in (Role.marketer, Role.manager, Role.rep, Role.finance):
        key = make_key(role)
        for method, path, body in requests:
            response = client.request(method, path, json=body, headers=auth(key))
            assert response.status_code == 403, (role, method, path)
    for method, path, body in requests:
        assert client.request(method, path, json=body, headers=auth(write_key)).status_code == 401
    assert track(client, created["write_key"]) == 200, "nothing was changed"
