"""The segments admin API: marketers create, validate, preview, page through members and
history, rebuild and import; bad input is a 422 naming the path and changes nothing."""

from __future__ import annotations

from fastapi.testclient import TestClient

from core.clock import clock
from core.keys import Role
from tests.conftest import Backend, make_key
from tests.journeys.conftest import T0, make_contact

PRO = {"field": "traits.plan", "op": "eq", "value": "pro"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_marketer_builds_previews_and_pages_a_dynamic_segment(
    backend: Backend, client: TestClient
) -> None:
    clock.freeze(T0)
    headers = auth(make_key(Role.marketer))
    pros = sorted(str(make_contact({"plan": "pro"}, email=f"p{i}@example.com")) for i in range(5))
    make_contact({"plan": "free"})

    preview = client.post(
        "/api/v1/segments/preview", json={"condition": PRO, "sample_size": 2}, headers=headers
    )
    assert preview.status_code == 200
    assert preview.json()["count"] == 5
    assert [c["id"] for c in preview.json()["sample"]] == pros[:2]

    created = client.post(
        "/api/v1/segments", json={"name": "Pro plan", "condition": PRO}, headers=headers
    )
    assert created.status_code == 201, created.text
    segment = created.json()
    assert (segment["kind"], segment["member_count"]) == ("dynamic", 5)

    seen: list[str] = []
    after = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after:
            params["after"] = after
        page = client.get(
            f"/api/v1/segments/{segment['id']}/members", params=params, headers=headers
        ).json()
        seen += [item["contact_id"] for item in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == pros

    history = client.get(
        f"/api/v1/segments/{segment['id']}/history", params={"limit": 3}, headers=headers
    ).json()
    assert [h["change"] for h in history["items"]] == ["entered"] * 3
    rest = client.get(
        f"/api/v1/segments/{segment['id']}/history",
        params={"after": history["next_after"]},
        headers=headers,
    ).json()
    assert len(rest["items"]) == 2 and rest["next_after"] is None

    rebuilt = client.post(f"/api/v1/segments/{segment['id']}/rebuild", headers=headers)
    assert rebuilt.json() == {"entered": 0, "left": 0, "member_count": 5}
    listed = client.get("/api/v1/segments", headers=headers).json()
    assert [s["id"] for s in listed] == [segment["id"]]


def test_bad_conditions_are_422_naming_the_path_and_store_nothing(
    backend: Backend, client: TestClient
) -> None:
    headers = auth(make_key(Role.marketer))
    bad = {"and": [PRO, {"field": "traits.plan", "op": "resembles", "value": "pro"}]}
    for path in ("/api/v1/segments/validate", "/api/v1/segments/preview", "/api/v1/segments"):
        body = {"condition": bad} if path != "/api/v1/segments" else {"name": "x", "condition": bad}
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 422, path
        assert "condition.and[1].op" in response.json()["error"]["fields"]

    missing = client.post(
        "/api/v1/segments/validate",
        json={"condition": {"in_segment": "00000000-0000-0000-0000-000000000001"}},
        headers=headers,
    )
    assert missing.status_code == 422
    assert "does not exist" in missing.json()["error"]["fields"]["condition"]
    no_condition = client.post("/api/v1/segments", json={"name": "x"}, headers=headers)
    assert no_condition.json()["error"]["fields"] == {
        "condition": "is required for a dynamic segment"
    }
    assert client.get("/api/v1/segments", headers=headers).json() == []

    ok = client.post("/api/v1/segments/validate", json={"condition": PRO}, headers=headers)
    assert ok.json() == {"valid": True, "referenced_segments": []}


def test_static_list_import_and_segment_references(backend: Backend, client: TestClient) -> None:
    clock.freeze(T0)
    headers = auth(make_key(Role.marketer))
    make_contact(email="alice@example.com")
    static = client.post(
        "/api/v1/segments", json={"name": "Trade show", "kind": "static"}, headers=headers
    ).json()
    imported = client.post(
        f"/api/v1/segments/{static['id']}/import",
        content=b"email\nalice@example.com\nghost@example.com\n",
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert imported.status_code == 200, imported.text
    assert imported.json() == {
        "lines": 2,
        "matched": 1,
        "added": 1,
        "unmatched": [
            {"line": 3, "value": "ghost@example.com", "reason": "no contact with this email"}
        ],
    }
    no_header = client.post(
        f"/api/v1/segments/{static['id']}/import",
        content=b"alice@example.com\n",
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert no_header.status_code == 422 and "csv" in no_header.json()["error"]["fields"]

    dependent = client.post(
        "/api/v1/segments",
        json={"name": "Shown up", "condition": {"in_segment": static["id"]}},
        headers=headers,
    ).json()
    assert dependent["member_count"] == 1
    in_use = client.delete(f"/api/v1/segments/{static['id']}", headers=headers)
    assert in_use.status_code == 409
    assert client.delete(f"/api/v1/segments/{dependent['id']}", headers=headers).status_code == 204
    assert client.delete(f"/api/v1/segments/{static['id']}", headers=headers).status_code == 204
    assert client.get(f"/api/v1/segments/{static['id']}", headers=headers).status_code == 404


def test_segments_need_the_marketer_role(backend: Backend, client: TestClient) -> None:
    rep = auth(make_key(Role.rep))
    assert client.get("/api/v1/segments", headers=rep).status_code == 403
    assert client.post("/api/v1/segments/preview", json={"condition": PRO}).status_code == 401
