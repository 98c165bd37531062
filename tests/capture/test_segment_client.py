"""The official segment-analytics-python client, unmodified, against a live server: its
events are accepted, queued with its messageIds, and become a contact and its events."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import segment.analytics as analytics
import uvicorn
from segment.analytics.request import APIError
from sqlalchemy import select

from api.app import create_server_app
from capture.envelope import payload_envelopes
from capture.models import Contact, Event
from capture.queue import get_queue
from core.db import session_scope
from tests.conftest import Backend, drain

SERVER_START_TIMEOUT_SECONDS = 10


@pytest.fixture
def live_url(backend: Backend) -> Iterator[str]:
    """A real uvicorn server on a free localhost port, in a thread of this process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_server_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(SERVER_START_TIMEOUT_SECONDS)
    sock.close()


def send_everything(client: analytics.Client) -> dict[str, str]:
    """One call of each kind for one visitor; returns messageId -> type as the client built them."""
    calls = [
        client.page(anonymous_id="anon-1", name="Pricing", properties={"path": "/pricing"}),
        client.identify(
            "user-1", {"email": "Ann@Example.com", "name": "Ann"}, anonymous_id="anon-1"
        ),
        client.track("user-1", "Signed Up", {"plan": "pro"}),
        client.screen("user-1", name="Home"),
        client.group("user-1", "acme", {"name": "Acme Ltd"}),
        client.alias("anon-2", "user-1"),
    ]
    for accepted, _message in calls:
        assert accepted
    return {message["messageId"]: message["type"] for _accepted, message in calls}


def queued_envelopes() -> list[dict[str, Any]]:
    entries = get_queue().take("test", 100, 0)
    return [envelope for _id, payload in entries for envelope in payload_envelopes(payload)]


def segment_client(write_key: str, host: str, use_gzip: bool, errors: list[Exception]) -> Any:
    return analytics.Client(
        write_key,
        host=host,
        gzip=use_gzip,
        max_retries=0,
        on_error=lambda error, _batch: errors.append(error),
    )


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_segment_client_events_are_accepted_and_queued(
    live_url: str, write_key: str, use_gzip: bool
) -> None:
    errors: list[Exception] = []
    client = segment_client(write_key, live_url, use_gzip, errors)
    try:
        sent = send_everything(client)
        client.flush()
    finally:
        client.shutdown()

    assert errors == []
    envelopes = queued_envelopes()
    assert {e["messageId"]: e["type"] for e in envelopes} == sent
    for envelope in envelopes:
        assert envelope["context"]["library"]["name"] == "analytics-python"
        assert envelope["userAgent"].startswith("analytics-python/")
        assert envelope["originalTimestamp"] is not None
    by_type = {e["type"]: e for e in envelopes}
    assert by_type["identify"]["traits"] == {"email": "Ann@Example.com", "name": "Ann"}
    assert by_type["track"]["event"] == "Signed Up"
    assert by_type["page"]["name"] == "Pricing"
    assert by_type["group"]["groupId"] == "acme"
    assert by_type["alias"]["previousId"] == "anon-2"


def test_segment_client_hears_a_wrong_write_key(live_url: str, write_key: str) -> None:
    errors: list[Exception] = []
    client = segment_client(write_key + "x", live_url, False, errors)
    try:
        client.track("user-1", "Signed Up")
        client.flush()
    finally:
        client.shutdown()

    assert [e.status for e in errors if isinstance(e, APIError)] == [401]
    assert get_queue().depth() == 0


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_segment_client_events_become_one_contact_with_its_events(
    live_url: str, write_key: str, use_gzip: bool
) -> None:
    errors: list[Exception] = []
    client = segment_client(write_key, live_url, use_gzip, errors)
    try:
        sent = send_everything(client)
        client.flush()
    finally:
        client.shutdown()
    assert errors == []

    assert drain() == len(sent)

    with session_scope() as session:
        [contact] = session.scalars(select(Contact).where(Contact.merged_into_id.is_(None))).all()
        events = session.scalars(select(Event)).all()
    assert contact.user_id == "user-1"
    assert contact.email == "ann@example.com"
    assert {e.message_id: e.type for e in events} == sent
    assert {e.contact_id for e in events} == {contact.id}
    assert {e.name for e in events if e.type == "track"} == {"Signed Up"}
