"""The channels admin API: deliveries by contact, journey and campaign; the suppression list;
channel health; and role checks on every route."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from channels.models import Delivery
from core import db
from core.keys import Role
from tests.channels.conftest import auth, delivery, freeze, make_contact
from tests.channels.fakes import MailHandler
from tests.channels.test_email import create_template, send_email
from tests.conftest import make_key


def test_deliveries_by_contact_journey_and_campaign_paginated(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str, monkeypatch: Any
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    monkeypatch.setenv("NURTURE_EMAIL_DAILY_CAP", "100")
    monkeypatch.setenv("NURTURE_EMAIL_WEEKLY_CAP", "100")
    from channels.settings import get_channel_settings

    get_channel_settings.cache_clear()
    template_id = create_template(client, admin_key)
    wei, ann = make_contact(), make_contact(email="ann@example.cn")
    journey = uuid.uuid4()
    for i in range(5):
        send_email(client, admin_key, wei, template_id, f"w{i}", campaign="spring")
    with db.session_scope() as session:
        for row in session.scalars(select(Delivery)):
            row.journey_id = journey
    send_email(client, admin_key, ann, template_id, "a1", campaign="autumn")

    pages: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"contact_id": str(wei), "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/deliveries", params=params, headers=auth(admin_key)).json()
        pages.extend(item["idempotency_key"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(pages) == [f"w{i}" for i in range(5)] and len(set(pages)) == 5

    by_journey = client.get(
        "/api/v1/deliveries", params={"journey_id": str(journey)}, headers=auth(admin_key)
    ).json()
    assert len(by_journey["items"]) == 5
    by_campaign = client.get(
        "/api/v1/deliveries", params={"campaign": "autumn"}, headers=auth(admin_key)
    ).json()
    assert [d["contact_id"] for d in by_campaign["items"]] == [str(ann)]
    one = by_campaign["items"][0]
    detail = client.get(f"/api/v1/deliveries/{one['id']}", headers=auth(admin_key)).json()
    assert detail["status"] == "sent" and detail["provider"] == "smtp"
    assert (
        client.get(f"/api/v1/deliveries/{uuid.uuid4()}", headers=auth(admin_key)).status_code == 404
    )
    bad = client.get("/api/v1/deliveries", params={"cursor": "zzz"}, headers=auth(admin_key))
    assert bad.status_code == 422 and "cursor" in bad.json()["error"]["fields"]

    health = client.get("/api/v1/channels/health", headers=auth(admin_key)).json()
    email = next(c for c in health["channels"] if c["channel"] == "email")
    assert email["by_status"] == {"sent": 6}
    assert email["paused"] is False


def test_suppression_list_management(
    channels_env: None, mailbox: MailHandler, client: TestClient, admin_key: str
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    added = client.post(
        "/api/v1/suppressions",
        json={"channel": "email", "address": " Li.Wei@Example.CN ", "detail": "asked by phone"},
        headers=auth(admin_key),
    )
    assert added.status_code == 201, added.text
    assert added.json()["address"] == "li.wei@example.cn"
    phone = client.post(
        "/api/v1/suppressions",
        json={"channel": "sms", "address": "138 0013 8000"},
        headers=auth(admin_key),
    )
    assert phone.json()["address"] == "+8613800138000"
    invalid = client.post(
        "/api/v1/suppressions",
        json={"channel": "email", "address": "not an email"},
        headers=auth(admin_key),
    )
    assert invalid.status_code == 422 and "address" in invalid.json()["error"]["fields"]

    listed = client.get(
        "/api/v1/suppressions", params={"channel": "email"}, headers=auth(admin_key)
    )
    assert [s["address"] for s in listed.json()["items"]] == ["li.wei@example.cn"]

    contact_id = make_contact()
    template_id = create_template(client, admin_key)
    stopped = send_email(client, admin_key, contact_id, template_id, "k1")
    assert delivery(stopped["id"]).error_code == "suppressed_manual"

    removed = client.delete(f"/api/v1/suppressions/{added.json()['id']}", headers=auth(admin_key))
    assert removed.status_code == 204
    assert (
        client.delete(
            f"/api/v1/suppressions/{added.json()['id']}", headers=auth(admin_key)
        ).status_code
        == 404
    )
    sent = send_email(client, admin_key, contact_id, template_id, "k2")
    assert delivery(sent["id"]).status == "sent"


def test_every_admin_route_checks_the_role(channels_env: None, client: TestClient) -> None:
    rep = auth(make_key(Role.rep))
    marketer = auth(make_key(Role.marketer))
    routes = [
        ("get", "/api/v1/templates"),
        ("post", "/api/v1/templates"),
        ("get", "/api/v1/deliveries"),
        ("post", "/api/v1/deliveries"),
        ("get", "/api/v1/suppressions"),
        ("post", "/api/v1/suppressions"),
        ("get", "/api/v1/channels/health"),
        ("post", "/api/v1/channels/sms/resume"),
        ("get", "/api/v1/webhook-endpoints"),
        ("get", "/api/v1/dead-letters"),
        ("get", "/api/v1/robots"),
        ("get", "/api/v1/email-layouts"),
    ]
    for method, path in routes:
        assert getattr(client, method)(path).status_code == 401, path
        assert getattr(client, method)(path, headers=rep).status_code == 403, path
    assert client.get("/api/v1/channels/health", headers=marketer).status_code == 200
    assert (
        client.get("/api/v1/templates", headers={"Authorization": "Bearer wk_x"}).status_code == 401
    )


def test_layouts_wrap_templates(channels_env: None, client: TestClient, admin_key: str) -> None:
    layout = client.post(
        "/api/v1/email-layouts",
        json={
            "name": "Brand",
            "html": "<html><body><div id='brand'>{{ content }}</div></body></html>",
        },
        headers=auth(admin_key),
    )
    assert layout.status_code == 201, layout.text
    template_id = create_template(
        client, admin_key, layout_id=layout.json()["id"], html="<p>Hi</p>"
    )
    preview = client.post(
        f"/api/v1/templates/{template_id}/preview", json={}, headers=auth(admin_key)
    )
    assert "<div id='brand'><p>Hi</p></div>" in preview.json()["html"]
    missing = client.post(
        "/api/v1/templates",
        json={
            "name": "x",
            "channel": "email",
            "subject": "s",
            "html": "h",
            "layout_id": str(uuid.uuid4()),
        },
        headers=auth(admin_key),
    )
    assert missing.status_code == 422 and "layout_id" in missing.json()["error"]["fields"]
    patched = client.patch(
        f"/api/v1/templates/{template_id}", json={"subject": "{{ oops"}, headers=auth(admin_key)
    )
    assert patched.status_code == 422 and "subject" in patched.json()["error"]["fields"]
    archived = client.delete(f"/api/v1/templates/{template_id}", headers=auth(admin_key))
    assert archived.status_code == 204
    assert client.get("/api/v1/templates", headers=auth(admin_key)).json() == []
