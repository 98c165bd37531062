"""The Segment-compatible tracking API: every call type is accepted and queued with the right
envelope, bad input gets a clear error and queues nothing, and no 2xx when the queue is down."""

from __future__ import annotations

import base64
import gzip
import re
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from capture.envelope import payload_envelopes
from capture.queue import get_queue
from capture.sources import write_keys
from core.clock import clock
from tests.conftest import Backend, reset_caches

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALLOWED_ORIGIN = "https://www.example.com"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def iso(moment: datetime) -> str:
    return moment.isoformat()


def long_text(length: int) -> str:
    return "x" * length


def queued() -> list[dict[str, Any]]:
    entries = get_queue().take("test", 100, 0)
    return [envelope for _id, payload in entries for envelope in payload_envelopes(payload)]


def assert_error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert field in error["fields"], error
    return error


def assert_nothing_queued() -> None:
    assert get_queue().depth() == 0


SINGLE_CALLS = {
    "identify": {"userId": "u-1", "traits": {"email": "ann@example.com", "plan": "pro"}},
    "track": {"userId": "u-1", "event": "Signed Up", "properties": {"plan": "pro"}},
    "page": {"anonymousId": "a-1", "name": "Pricing", "properties": {"path": "/pricing"}},
    "screen": {"anonymousId": "a-1", "name": "Home", "properties": {"variant": "b"}},
    "group": {"userId": "u-1", "groupId": "acme", "traits": {"name": "Acme Ltd"}},
    "alias": {"userId": "u-1", "previousId": "a-1"},
}


@pytest.mark.parametrize("kind", sorted(SINGLE_CALLS))
def test_every_single_call_is_accepted_and_queued(
    client: TestClient, write_key: str, kind: str
) -> None:
    clock.freeze(NOW)
    message = {**SINGLE_CALLS[kind], "messageId": f"m-{kind}", "context": {"locale": "zh-CN"}}
    response = client.post(
        f"/v1/{kind}", json=message, headers={**basic(write_key), "User-Agent": "pytest-ua"}
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    [envelope] = queued()
    source = write_keys.lookup(write_key)
    assert source is not None
    assert envelope["type"] == kind
    assert envelope["messageId"] == f"m-{kind}"
    assert envelope["sourceId"] == str(source.id)
    assert envelope["receivedAt"] == NOW.isoformat()
    assert envelope["timestamp"] == NOW.isoformat()
    assert envelope["originalTimestamp"] is None
    assert envelope["context"] == {"locale": "zh-CN"}
    assert envelope["ip"] == "testclient"
    assert envelope["userAgent"] == "pytest-ua"
    for field, value in SINGLE_CALLS[kind].items():
        expected_key = {"event": "event", "name": "name"}.get(field, field)
        assert envelope[expected_key] == value, field


def test_batch_of_every_type_is_one_queue_entry(client: TestClient, write_key: str) -> None:
    batch = [
        {**body, "type": kind, "messageId": f"m-{kind}"} for kind, body in SINGLE_CALLS.items()
    ]

    response = client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key))

    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    entries = get_queue().take("test", 100, 0)
    assert len(entries) == 1
    envelopes = payload_envelopes(entries[0][1])
    assert [e["type"] for e in envelopes] == list(SINGLE_CALLS)
    assert [e["messageId"] for e in envelopes] == [f"m-{k}" for k in SINGLE_CALLS]


def test_message_without_message_id_gets_one(client: TestClient, write_key: str) -> None:
    response = client.post(
        "/v1/track", json={"userId": "u", "event": "E"}, headers=basic(write_key)
    )

    assert response.status_code == 200
    [envelope] = queued()
    assert len(envelope["messageId"]) == 36


def test_identify_takes_traits_from_context_when_absent(client: TestClient, write_key: str) -> None:
    body = {"userId": "u", "context": {"traits": {"email": "x@example.com"}}}

    assert client.post("/v1/identify", json=body, headers=basic(write_key)).status_code == 200
    [envelope] = queued()
    assert envelope["traits"] == {"email": "x@example.com"}


def test_batch_context_and_integrations_are_merged_into_each_item(
    client: TestClient, write_key: str
) -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "userId": "u",
                "event": "A",
                "context": {"page": {"path": "/a"}, "ip": "203.0.113.9"},
                "integrations": {"Mixpanel": True},
            },
            {"type": "page", "anonymousId": "x", "name": "B"},
        ],
        "context": {"library": {"name": "lib", "version": "1"}, "ip": "198.51.100.1"},
        "integrations": {"All": False},
    }

    response = client.post("/v1/batch", json=body, headers=basic(write_key))

    assert response.status_code == 200, response.text
    first, second = queued()
    assert first["context"] == {
        "library": {"name": "lib", "version": "1"},
        "page": {"path": "/a"},
        "ip": "203.0.113.9",
    }
    assert first["ip"] == "203.0.113.9"
    assert first["integrations"] == {"Mixpanel": True}
    assert second["context"] == {"library": {"name": "lib", "version": "1"}, "ip": "198.51.100.1"}
    assert second["ip"] == "198.51.100.1"
    assert second["integrations"] == {"All": False}


def test_write_key_in_a_text_plain_body_like_send_beacon(
    client: TestClient, write_key: str
) -> None:
    body = orjson.dumps({"writeKey": write_key, "anonymousId": "a", "event": "Clicked"})

    response = client.post(
        "/v1/track",
        content=body,
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": ALLOWED_ORIGIN},
    )

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    [envelope] = queued()
    assert envelope["event"] == "Clicked"
    assert "writeKey" not in envelope


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_gzip_encoded_bodies(client: TestClient, write_key: str, path: str) -> None:
    message = {"type": "track", "userId": "u", "event": "Zipped", "messageId": "gz-1"}
    body = {"batch": [message]} if path == "/v1/batch" else message

    response = client.post(
        path,
        content=gzip.compress(orjson.dumps(body)),
        headers={
            **basic(write_key),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )

    assert response.status_code == 200, response.text
    [envelope] = queued()
    assert envelope["messageId"] == "gz-1"


def test_clock_skew_is_corrected_with_sent_at(client: TestClient, write_key: str) -> None:
    clock.freeze(NOW)
    # The device clock runs three hours slow; the event happened 5 s before it was sent.
    device_sent = NOW - timedelta(hours=3)
    device_event = device_sent - timedelta(seconds=5)
    body = {
        "batch": [{"type": "track", "userId": "u", "event": "E", "timestamp": iso(device_event)}],
        "sentAt": iso(device_sent),
    }

    assert client.post("/v1/batch", json=body, headers=basic(write_key)).status_code == 200

    [envelope] = queued()
    assert envelope["timestamp"] == (NOW - timedelta(seconds=5)).isoformat()
    assert envelope["originalTimestamp"] == device_event.isoformat()
    assert envelope["receivedAt"] == NOW.isoformat()


def test_timestamp_without_sent_at_is_kept(client: TestClient, write_key: str) -> None:
    clock.freeze(NOW)
    earlier = NOW - timedelta(days=2)
    body = {"userId": "u", "event": "E", "timestamp": "2026-02-27T20:00:00+08:00"}

    assert client.post("/v1/track", json=body, headers=basic(write_key)).status_code == 200

    [envelope] = queued()
    assert envelope["timestamp"] == earlier.isoformat()


def test_far_future_timestamp_is_clamped_and_the_original_kept(
    client: TestClient, write_key: str
) -> None:
    clock.freeze(NOW)
    future = NOW + timedelta(days=400)
    body = {"userId": "u", "event": "E", "timestamp": iso(future)}

    assert client.post("/v1/track", json=body, headers=basic(write_key)).status_code == 200

    [envelope] = queued()
    assert envelope["timestamp"] == NOW.isoformat()
    assert envelope["originalTimestamp"] == future.isoformat()


def test_a_skew_correction_outside_the_calendar_falls_back_to_received_at(
    client: TestClient, write_key: str
) -> None:
    clock.freeze(NOW)
    body = {
        "userId": "u",
        "event": "E",
        "timestamp": "0001-01-02T00:00:00+00:00",
        "sentAt": "9999-12-30T00:00:00+00:00",
    }

    response = client.post("/v1/track", json=body, headers=basic(write_key))

    assert response.status_code == 200, response.text
    [envelope] = queued()
    assert envelope["timestamp"] == NOW.isoformat()


def test_single_event_over_32_kb_is_413(client: TestClient, write_key: str) -> None:
    body = {"userId": "u", "event": "E", "properties": {"blob": "x" * (32 * 1024)}}

    response = client.post("/v1/track", json=body, headers=basic(write_key))

    assert_error(response, 413)
    assert_nothing_queued()


def test_batch_item_over_32_kb_is_413_naming_it(client: TestClient, write_key: str) -> None:
    small = {"type": "track", "userId": "u", "event": "E"}
    big = {**small, "properties": {"blob": "x" * (32 * 1024)}}

    response = client.post("/v1/batch", json={"batch": [small, big]}, headers=basic(write_key))

    assert_error(response, 413, "batch.1")
    assert_nothing_queued()


def test_batch_over_500_kb_is_413(client: TestClient, write_key: str) -> None:
    item = {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 20_000}}
    body = {"batch": [item] * 30}

    response = client.post("/v1/batch", json=body, headers=basic(write_key))

    assert_error(response, 413)
    assert_nothing_queued()


def test_batch_just_under_500_kb_is_accepted(client: TestClient, write_key: str) -> None:
    item = {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 30_000}}
    body = {"batch": [item] * 16}
    assert len(orjson.dumps(body)) < 500 * 1024

    response = client.post("/v1/batch", json=body, headers=basic(write_key))

    assert response.status_code == 200, response.text
    assert len(queued()) == 16


def test_oversized_chunked_body_is_413_without_a_content_length(
    client: TestClient, write_key: str
) -> None:
    def chunks() -> Any:
        for _ in range(40):
            yield b" " * 16_384

    response = client.post("/v1/batch", content=chunks(), headers=basic(write_key))

    assert "content-length" not in response.request.headers
    assert_error(response, 413)
    assert_nothing_queued()


def test_gzip_bomb_is_refused_without_inflating_it(client: TestClient, write_key: str) -> None:
    # 256 MB of zeros compress to about 250 KB, under the 500 KB limit on the wire.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    megabyte = b"\0" * (1 << 20)
    bomb = b"".join(compressor.compress(megabyte) for _ in range(256)) + compressor.flush()
    assert len(bomb) < 500 * 1024

    tracemalloc.start()
    try:
        response = client.post(
            "/v1/batch", content=bomb, headers={**basic(write_key), "Content-Encoding": "gzip"}
        )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert_error(response, 413)
    assert peak < 16 * (1 << 20), f"peak {peak} bytes: the bomb was inflated"
    assert_nothing_queued()


# (path, body, field the error must name); every body is sent with a valid write key.
INVALID_MESSAGES: dict[str, tuple[str, Any, str]] = {
    "no ids": ("/v1/track", {"event": "E"}, "userId"),
    "userId object": ("/v1/track", {"userId": {"a": 1}, "event": "E"}, "userId"),
    "userId bool": ("/v1/identify", {"userId": True}, "userId"),
    "anonymousId list": ("/v1/page", {"anonymousId": [1]}, "anonymousId"),
    "track without event": ("/v1/track", {"userId": "u"}, "event"),
    "event not a string": ("/v1/track", {"userId": "u", "event": 5}, "event"),
    "properties a list": (
        "/v1/track",
        {"userId": "u", "event": "E", "properties": []},
        "properties",
    ),
    "traits a string": ("/v1/identify", {"userId": "u", "traits": "vip"}, "traits"),
    "context a string": ("/v1/page", {"userId": "u", "context": "x"}, "context"),
    "group without groupId": ("/v1/group", {"userId": "u"}, "groupId"),
    "alias without previousId": ("/v1/alias", {"userId": "u"}, "previousId"),
    "alias without userId": ("/v1/alias", {"previousId": "a"}, "userId"),
    "timestamp a number": (
        "/v1/track",
        {"userId": "u", "event": "E", "timestamp": 17},
        "timestamp",
    ),
    "timestamp garbage": (
        "/v1/track",
        {"userId": "u", "event": "E", "timestamp": "yesterday"},
        "timestamp",
    ),
    "timestamp before year 1 in UTC": (
        "/v1/track",
        {"userId": "u", "event": "E", "timestamp": "0001-01-01T00:00:00+14:00"},
        "timestamp",
    ),
    "sentAt garbage": ("/v1/track", {"userId": "u", "event": "E", "sentAt": "soon"}, "sentAt"),
    "userId with a newline": ("/v1/track", {"userId": "u\n1", "event": "E"}, "userId"),
    "event with a control character": ("/v1/track", {"userId": "u", "event": "E\x07"}, "event"),
    "userId too long": ("/v1/track", {"userId": long_text(201), "event": "E"}, "userId"),
    "event name too long": ("/v1/track", {"userId": "u", "event": long_text(201)}, "event"),
    "messageId too long": (
        "/v1/track",
        {"userId": "u", "event": "E", "messageId": long_text(300)},
        "messageId",
    ),
    "batch missing": ("/v1/batch", {"sentAt": "2026-01-01T00:00:00Z"}, "batch"),
    "batch empty": ("/v1/batch", {"batch": []}, "batch"),
    "batch an object": ("/v1/batch", {"batch": {"type": "track"}}, "batch"),
    "batch item not an object": (
        "/v1/batch",
        {"batch": [{"type": "page", "userId": "u"}, 3]},
        "batch.1",
    ),
    "batch item without type": ("/v1/batch", {"batch": [{"userId": "u"}]}, "batch.0.type"),
    "batch item type a list": (
        "/v1/batch",
        {"batch": [{"type": ["track"], "userId": "u"}]},
        "batch.0.type",
    ),
    "batch item unknown type": (
        "/v1/batch",
        {"batch": [{"type": "x", "userId": "u"}]},
        "batch.0.type",
    ),
    "batch item wrong userId type": (
        "/v1/batch",
        {"batch": [{"type": "page", "userId": "u"}] * 3 + [{"type": "page", "userId": [1]}]},
        "batch.3.userId",
    ),
    "batch item context a string": (
        "/v1/batch",
        {"batch": [{"type": "page", "userId": "u", "context": "x"}], "context": {"a": 1}},
        "batch.0.context",
    ),
    "batch context a list": (
        "/v1/batch",
        {"batch": [{"type": "page", "userId": "u"}], "context": []},
        "context",
    ),
    "batch integrations a string": (
        "/v1/batch",
        {"batch": [{"type": "page", "userId": "u"}], "integrations": "all"},
        "integrations",
    ),
    "batch sentAt a number": (
        "/v1/batch",
        {"batch": [{"type": "page", "userId": "u"}], "sentAt": 1},
        "sentAt",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_MESSAGES))
def test_invalid_messages_get_422_naming_the_field_and_queue_nothing(
    client: TestClient, write_key: str, case: str
) -> None:
    path, body, field = INVALID_MESSAGES[case]

    response = client.post(path, json=body, headers=basic(write_key))

    assert_error(response, 422, field)
    assert_nothing_queued()


def test_one_bad_item_rejects_the_whole_batch(client: TestClient, write_key: str) -> None:
    good = {"type": "track", "userId": "u", "event": "E"}
    body = {"batch": [good, good, {"type": "track", "event": "E"}, good]}

    response = client.post("/v1/batch", json=body, headers=basic(write_key))

    error = assert_error(response, 422, "batch.2.userId")
    assert "batch.2.userId" in error["message"]
    assert_nothing_queued()


def test_every_bad_item_of_a_batch_is_named_and_nothing_is_queued(
    client: TestClient, write_key: str
) -> None:
    good = {"type": "track", "userId": "u", "event": "E", "messageId": "m"}
    body = {
        "batch": [
            good,
            {"type": "track", "event": "E", "messageId": "m-2"},  # neither userId nor anonymousId
            {**good, "type": "group"},  # no groupId
            {**good, "messageId": None},  # valid: it gets an id
            {**good, "userId": "", "anonymousId": ""},
        ]
    }

    response = client.post("/v1/batch", json=body, headers=basic(write_key))

    error = assert_error(response, 422)
    assert error["fields"] == {
        "batch.1.userId": "userId or anonymousId is required",
        "batch.2.groupId": "is required for group",
        "batch.4.userId": "userId or anonymousId is required",
    }
    assert_nothing_queued()


def test_a_batch_with_an_oversized_item_is_413_even_when_another_is_invalid(
    client: TestClient, write_key: str
) -> None:
    big = {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 33_000}}
    body = {"batch": [{"type": "track", "event": "E"}, big]}

    response = client.post("/v1/batch", json=body, headers=basic(write_key))

    error = assert_error(response, 413)
    assert error["fields"] == {"batch.1": "is larger than 32768 bytes"}
    assert_nothing_queued()


# (body bytes, extra headers, status)
UNREADABLE_BODIES: dict[str, tuple[bytes, dict[str, str], int]] = {
    "malformed JSON": (b'{"userId": "u", "event": ', {}, 400),
    "not UTF-8": (b'{"userId": "\xff\xfe", "event": "E"}', {}, 400),
    "a JSON list": (b'[{"userId": "u", "event": "E"}]', {}, 400),
    "a JSON string": (b'"track"', {}, 400),
    "JSON null": (b"null", {}, 400),
    "empty": (b"", {}, 400),
    "raw control character in a string": (b'{"userId": "u\x01", "event": "E"}', {}, 400),
    "nested 2000 deep": (
        b'{"userId": "u", "event": "E", "properties": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        {},
        400,
    ),
    "not gzip": (b'{"userId": "u"}', {"Content-Encoding": "gzip"}, 400),
    "truncated gzip": (
        gzip.compress(b'{"userId": "u", "event": "E"}')[:-12],
        {"Content-Encoding": "gzip"},
        400,
    ),
    "brotli": (b'{"userId": "u", "event": "E"}', {"Content-Encoding": "br"}, 415),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_BODIES))
def test_unreadable_bodies_get_a_clear_error_and_queue_nothing(
    client: TestClient, write_key: str, case: str
) -> None:
    content, headers, status = UNREADABLE_BODIES[case]

    response = client.post(
        "/v1/track",
        content=content,
        headers={**basic(write_key), "Content-Type": "application/json", **headers},
    )

    assert_error(response, status)
    assert_nothing_queued()


def test_nul_characters_are_removed_and_other_control_characters_kept(
    client: TestClient, write_key: str
) -> None:
    body = {
        "anonymousId": "a\u0000b",
        "event": "E",
        "properties": {
            "no\u0000te": "line1\nline2\u0000",
            "nested": [{"k": "\u0000"}],
            "bell": "\u0007",
        },
    }

    response = client.post("/v1/track", json=body, headers=basic(write_key))

    assert response.status_code == 200, response.text
    [envelope] = queued()
    assert envelope["anonymousId"] == "ab"
    assert envelope["properties"] == {
        "note": "line1\nline2",
        "nested": [{"k": ""}],
        "bell": "\u0007",
    }


def test_long_property_strings_within_the_event_limit_are_kept_whole(
    client: TestClient, write_key: str
) -> None:
    text = "长" * 10_000  # 30 KB of UTF-8
    body = {"userId": "u", "event": "E", "properties": {"note": text}}

    response = client.post("/v1/track", json=body, headers=basic(write_key))

    assert response.status_code == 200, response.text
    [envelope] = queued()
    assert envelope["properties"]["note"] == text


AUTH_FAILURES: dict[str, dict[str, Any]] = {
    "no key": {"headers": {}, "body": {}},
    "unknown write key": {"headers": {}, "body": {"writeKey": "wk_notarealkeyatall"}},
    "write key not a string": {"headers": {}, "body": {"writeKey": 12345}},
    "garbage Basic header": {"headers": {"Authorization": "Basic %%%"}, "body": {}},
    "Bearer instead of Basic": {"headers": {"Authorization": "Bearer wk_x"}, "body": {}},
}


@pytest.mark.parametrize("case", sorted(AUTH_FAILURES))
def test_missing_or_wrong_write_key_is_401(client: TestClient, write_key: str, case: str) -> None:
    failure = AUTH_FAILURES[case]
    body = {"userId": "u", "event": "E", **failure["body"]}

    response = client.post("/v1/track", json=body, headers=failure["headers"])

    assert_error(response, 401)
    assert_nothing_queued()


def test_a_revealed_write_key_with_a_changed_character_is_401(
    client: TestClient, write_key: str
) -> None:
    tampered = write_key[:-1] + ("A" if write_key[-1] != "A" else "B")

    response = client.post("/v1/track", json={"userId": "u", "event": "E"}, headers=basic(tampered))

    assert_error(response, 401)
    assert_nothing_queued()


def test_admin_key_used_as_write_key_is_401(client: TestClient, admin_key: str) -> None:
    by_header = client.post(
        "/v1/track", json={"userId": "u", "event": "E"}, headers=basic(admin_key)
    )
    in_body = client.post(
        "/v1/batch", json={"writeKey": admin_key, "batch": [{"type": "page", "userId": "u"}]}
    )

    assert_error(by_header, 401)
    assert_error(in_body, 401)
    assert_nothing_queued()


def test_write_key_is_refused_by_the_admin_api(client: TestClient, write_key: str) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    admin_reads = [
        path for path, methods in paths.items() if path.startswith("/api/v1/") and "get" in methods
    ]
    assert admin_reads

    for template in admin_reads:
        path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", template)
        for header in (f"Bearer {write_key}", basic(write_key)["Authorization"]):
            response = client.get(path, headers={"Authorization": header})
            assert_error(response, 401)


def test_allowed_origin_gets_cors_headers(client: TestClient, write_key: str) -> None:
    response = client.post(
        "/v1/page",
        json={"anonymousId": "a"},
        headers={**basic(write_key), "Origin": ALLOWED_ORIGIN + "/"},
    )

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN + "/"
    assert "Origin" in response.headers["vary"]


def test_other_origin_is_403_and_queues_nothing(client: TestClient, write_key: str) -> None:
    response = client.post(
        "/v1/page",
        json={"anonymousId": "a"},
        headers={**basic(write_key), "Origin": "https://evil.example"},
    )

    assert_error(response, 403)
    assert "access-control-allow-origin" not in response.headers
    assert_nothing_queued()


def test_preflight_answers_204(client: TestClient) -> None:
    response = client.options(
        "/v1/track",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed_headers and "authorization" in allowed_headers


def test_queue_failure_is_503_with_retry_after(
    backend: Backend, write_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.redis_url:
        monkeypatch.setenv("NURTURE_REDIS_URL", "redis://127.0.0.1:6390/0")
    else:
        # The data directory cannot be created: a file stands where it should be.
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        monkeypatch.setenv("NURTURE_DATA_DIR", str(blocker / "data"))
    reset_caches()
    message = {"type": "track", "userId": "u", "event": "E"}

    with TestClient(create_app()) as client:
        single = client.post("/v1/track", json=message, headers=basic(write_key))
        batch = client.post("/v1/batch", json={"batch": [message]}, headers=basic(write_key))

    for response in (single, batch):
        assert_error(response, 503)
        assert response.headers["retry-after"] == "1"
