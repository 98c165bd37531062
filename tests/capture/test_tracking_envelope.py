"""The queued form of a tracking request: one record per request holding the messages as
sent and what they share once; the worker expands it into the same envelopes every time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from capture.envelope import payload_envelopes, payload_event_count
from capture.models import Event
from capture.queue import get_queue
from capture.sources import write_keys
from core.clock import clock
from core.db import session_scope
from tests.capture.test_tracking_api import basic
from tests.conftest import drain

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def queued_payloads() -> list[bytes]:
    return [payload for _id, payload in get_queue().take("test", 100, 0)]


def test_a_batch_is_queued_as_its_body_was_sent_with_the_request_beside_it(
    client: TestClient, write_key: str
) -> None:
    clock.freeze(NOW)
    items: list[dict[str, Any]] = [
        {"type": "track", "userId": "u", "event": "A", "messageId": "m-a", "properties": {"n": 1}},
        {"type": "page", "anonymousId": "x", "name": "B", "messageId": "m-b"},
    ]
    body = {
        "batch": items,
        "sentAt": (NOW - timedelta(hours=1)).isoformat(),
        "context": {"library": {"name": "lib"}},
        "integrations": {"All": False},
    }
    # Spaces as a hand-written client might send: the body is queued byte for byte.
    text = orjson.dumps(body, option=orjson.OPT_INDENT_2)

    response = client.post(
        "/v1/batch",
        content=text,
        headers={**basic(write_key), "User-Agent": "ua", "Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text
    [payload] = queued_payloads()
    assert text in payload
    [record] = orjson.loads(payload)
    source = write_keys.lookup(write_key)
    assert source is not None
    assert record["request"] == {
        "sourceId": str(source.id),
        "receivedAt": NOW.isoformat(),
        "ip": "testclient",
        "userAgent": "ua",
    }
    assert record["body"] == body
    assert payload_event_count(payload) == 2
    first, second = payload_envelopes(payload)
    assert first["context"] == {"library": {"name": "lib"}}
    assert second["integrations"] == {"All": False}


def queued_beacon_record(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Posts `body`, write key inside, as sendBeacon does; the one record queued for it."""
    response = client.post(
        path, content=orjson.dumps(body), headers={"Content-Type": "text/plain;charset=UTF-8"}
    )

    assert response.status_code == 200, response.text
    [payload] = queued_payloads()
    assert body["writeKey"].encode() not in payload
    [record] = orjson.loads(payload)
    return dict(record)


def test_a_batch_is_queued_without_the_write_key_of_its_body(
    client: TestClient, write_key: str
) -> None:
    items = [{"type": "track", "anonymousId": "a", "event": "Clicked", "messageId": "m-1"}]

    record = queued_beacon_record(client, "/v1/batch", {"writeKey": write_key, "batch": items})

    assert record["body"] == {"batch": items}


def test_a_batch_with_nul_escapes_is_queued_without_them(
    client: TestClient, write_key: str
) -> None:
    item = {"type": "track", "anonymousId": "a\u0000b", "event": "E", "messageId": "m-1"}
    text = orjson.dumps({"batch": [item]})
    assert b"\\u0000" in text

    response = client.post("/v1/batch", content=text, headers=basic(write_key))

    assert response.status_code == 200, response.text
    [payload] = queued_payloads()
    assert b"\\u0000" not in payload
    [envelope] = payload_envelopes(payload)
    assert envelope["anonymousId"] == "ab"


def test_only_the_messages_sent_without_an_id_get_one_beside_the_body(
    client: TestClient, write_key: str
) -> None:
    items: list[dict[str, Any]] = [
        {"type": "track", "userId": "u", "event": "A", "messageId": "m-a"},
        {"type": "track", "userId": "u", "event": "B"},
        {"type": "track", "userId": "u", "event": "C", "messageId": ""},
        {"type": "track", "userId": "u", "event": "D", "messageId": 7},
    ]

    response = client.post("/v1/batch", json={"batch": items}, headers=basic(write_key))

    assert response.status_code == 200, response.text
    [payload] = queued_payloads()
    [record] = orjson.loads(payload)
    assert record["body"]["batch"] == items
    given = record["request"]["messageIds"]
    assert sorted(given) == ["1", "2"]
    assert all(len(message_id) == 36 for message_id in given.values())
    envelopes = payload_envelopes(payload)
    assert [e["messageId"] for e in envelopes] == ["m-a", given["1"], given["2"], "7"]


def test_a_single_call_is_queued_without_the_write_key_of_its_body(
    client: TestClient, write_key: str
) -> None:
    body = {"writeKey": write_key, "anonymousId": "a", "event": "Clicked"}

    record = queued_beacon_record(client, "/v1/track", body)

    assert record["request"]["type"] == "track"
    assert record["messages"] == [
        {"anonymousId": "a", "event": "Clicked", "messageId": record["messages"][0]["messageId"]}
    ]


def test_message_ids_are_given_at_capture_so_every_expansion_agrees(
    client: TestClient, write_key: str
) -> None:
    item = {"type": "track", "userId": "u", "event": "E"}

    response = client.post("/v1/batch", json={"batch": [item, item]}, headers=basic(write_key))

    assert response.status_code == 200, response.text
    [payload] = queued_payloads()
    first, second = payload_envelopes(payload)
    assert len(first["messageId"]) == 36 and first["messageId"] != second["messageId"]
    assert [e["messageId"] for e in payload_envelopes(payload)] == [
        first["messageId"],
        second["messageId"],
    ]


def test_a_request_record_delivered_twice_is_stored_once(
    client: TestClient, write_key: str
) -> None:
    items = [{"type": "track", "userId": "u", "event": f"E{n}"} for n in range(3)]
    response = client.post("/v1/batch", json={"batch": items}, headers=basic(write_key))
    assert response.status_code == 200, response.text
    [payload] = queued_payloads()

    queue = get_queue()
    queue.put_sync(payload)
    queue.put_sync(payload)
    drain()

    with session_scope() as session:
        stored = session.scalar(select(func.count()).select_from(Event))
    assert stored == 3
