"""The 1x1 pixel: always the GIF and never cached; a valid hit queues the same envelope the
tracking API would, and a bad one queues nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from capture.envelope import payload_envelopes
from capture.models import Event
from capture.queue import get_queue
from capture.snippet_router import TRANSPARENT_GIF
from capture.sources import create_source
from core import db
from core.keys import Role
from tests.conftest import Backend, drain, make_key, reset_caches


def queued() -> list[dict[str, Any]]:
    entries = get_queue().take("test", 100, 0)
    return [envelope for _id, payload in entries for envelope in payload_envelopes(payload)]


def assert_gif(response: Any, status: int = 200) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    assert response.content == TRANSPARENT_GIF


def test_the_gif_is_a_transparent_1x1_image() -> None:
    assert TRANSPARENT_GIF[:6] == b"GIF89a"
    width, height = (int.from_bytes(TRANSPARENT_GIF[i : i + 2], "little") for i in (6, 8))
    assert (width, height) == (1, 1)


def test_email_open_is_queued_as_a_track_call(client: TestClient, write_key: str) -> None:
    response = client.get(
        "/v1/pixel.gif",
        params={
            "writeKey": write_key,
            "anonymousId": "visitor-1",
            "event": "Email Opened",
            "delivery_id": "d-42",
            "campaign": "welcome",
        },
        headers={"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Outlook"},
    )

    assert_gif(response)
    [envelope] = queued()
    assert envelope["type"] == "track"
    assert envelope["event"] == "Email Opened"
    assert envelope["anonymousId"] == "visitor-1"
    assert envelope["properties"] == {"delivery_id": "d-42", "campaign": "welcome"}
    assert envelope["userAgent"] == "Mozilla/5.0 (Windows NT 10.0) Outlook"
    assert envelope["messageId"] and envelope["receivedAt"] and envelope["sourceId"]


def test_page_view_takes_the_url_or_the_referer(client: TestClient, write_key: str) -> None:
    url = "https://www.example.com/no-js?utm_source=zhihu&utm_medium=social"
    base = {"writeKey": write_key, "type": "page", "userId": "u-7"}

    assert_gif(client.get("/v1/pixel.gif", params={**base, "url": url, "title": "No JS"}))
    assert_gif(
        client.get("/v1/pixel.gif", params=base, headers={"Referer": "https://www.example.com/b"})
    )

    first, second = queued()
    assert first["type"] == "page" and first["userId"] == "u-7"
    assert first["context"]["page"] == {"url": url, "path": "/no-js", "title": "No JS"}
    assert first["properties"]["url"] == url
    assert second["context"]["page"]["url"] == "https://www.example.com/b"


@pytest.mark.parametrize(
    "params",
    [
        {"writeKey": "wk_not-a-real-key", "anonymousId": "a", "event": "Opened"},
        {"anonymousId": "a", "event": "Opened"},
        {"writeKey": "{write_key}", "event": "Opened"},
        {"writeKey": "{write_key}", "anonymousId": "a"},
        {"writeKey": "{write_key}", "anonymousId": "a", "type": "identify"},
        {"writeKey": "{write_key}", "anonymousId": "a" * 201, "event": "Opened"},
        {"writeKey": "{write_key}", "anonymousId": "a", "event": "Opened", "timestamp": "soon"},
        {"writeKey": "{write_key}", "anonymousId": "a", "type": "page", "url": "http://[::1"},
    ],
)
def test_bad_hits_still_get_the_gif_and_queue_nothing(
    client: TestClient, write_key: str, params: dict[str, str]
) -> None:
    params = {key: value.format(write_key=write_key) for key, value in params.items()}

    assert_gif(client.get("/v1/pixel.gif", params=params))
    assert get_queue().depth() == 0


def test_admin_key_is_not_a_write_key(client: TestClient, write_key: str) -> None:
    params = {"writeKey": make_key(Role.admin), "anonymousId": "a", "event": "Opened"}

    assert_gif(client.get("/v1/pixel.gif", params=params))
    assert get_queue().depth() == 0


def test_do_not_track_is_honoured_when_the_source_opts_in(client: TestClient) -> None:
    with db.session_scope() as session:
        _source, key = create_source(session, "careful", [], honor_do_not_track=True)
    params = {"writeKey": key, "anonymousId": "a", "event": "Opened"}

    assert_gif(client.get("/v1/pixel.gif", params=params, headers={"DNT": "1"}))
    assert get_queue().depth() == 0
    assert_gif(client.get("/v1/pixel.gif", params=params))
    assert get_queue().depth() == 1


def test_queue_down_is_503_with_the_gif(
    backend: Backend, write_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.redis_url:
        monkeypatch.setenv("NURTURE_REDIS_URL", "redis://127.0.0.1:6390/0")
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        monkeypatch.setenv("NURTURE_DATA_DIR", str(blocker / "data"))
    reset_caches()
    params = {"writeKey": write_key, "anonymousId": "a", "event": "Opened"}

    with TestClient(create_app()) as client:
        assert_gif(client.get("/v1/pixel.gif", params=params), 503)


def test_a_pixel_hit_lands_on_the_visitor_timeline(client: TestClient, write_key: str) -> None:
    params = {"writeKey": write_key, "anonymousId": "visitor-9", "event": "Email Opened"}
    assert_gif(client.get("/v1/pixel.gif", params=params))

    drain()

    with db.session_scope() as session:
        [event] = session.scalars(select(Event)).all()
        assert (event.type, event.name, event.anonymous_id) == (
            "track",
            "Email Opened",
            "visitor-9",
        )
