"""The capture queue's entry format, and turning a queued entry back into event envelopes.

A queue payload is a JSON list. Each item is one of

- a batch record, `{"request": {...}, "body": {...}}`, which the tracking API writes for a
  batch call: the body as the client sent it (validated, NUL-free, without `writeKey`), so
  its `batch` of messages and the `sentAt`, `context` and `integrations` they share; and
  what the request adds: `sourceId`, `receivedAt`, `ip`, `userAgent` and `messageIds`, the
  ids given to messages sent without one (by index in `batch`, as strings);
- a request record, `{"request": {...}, "messages": [...]}`, which the tracking API writes
  for a single call: the message as sent (with a messageId) and, in `request`, the call
  `type` with `sourceId`, `receivedAt`, `ip` and `userAgent` (and, in records queued
  before batch records existed, a batch's `sentAt`, `context` and `integrations`);
- or a finished envelope (the forms, the pixel and internal producers build those with
  `capture.tracking.envelope_for_single`).

The worker expands all into the same envelopes, so the accept path does per request only
what must be answered at once (authentication, validation) and leaves clock-skew correction,
context merging and envelope building to the worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from core.settings import get_settings


def utc_time(value: str) -> datetime:
    """An ISO 8601 string as an aware UTC datetime (naive values are taken as UTC)."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def corrected_timestamp(
    original: datetime | None,
    sent_at: datetime | None,
    received_at: datetime,
    max_skew: timedelta,
) -> datetime:
    """Segment's clock-skew correction: the device clock may be wrong, but the gap between
    the event and the send is measured on that same clock, so it carries over."""
    if original is None:
        return received_at
    timestamp = original
    if sent_at is not None:
        try:
            timestamp = received_at - (sent_at - original)
        except OverflowError:
            return received_at
    return received_at if timestamp > received_at + max_skew else timestamp


def _text(value: Any) -> str | None:
    """An id as stored: absent or empty is None, a number becomes its string."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def build_envelope(
    message: dict[str, Any],
    kind: str,
    request: dict[str, Any],
    received_at: datetime,
    sent_at: datetime | None,
    max_skew: timedelta,
) -> dict[str, Any]:
    """The envelope of one validated message (see `capture.tracking.message_problems`).

    `request` holds sourceId, ip, userAgent and receivedAt (the string of `received_at`);
    `sent_at` is the request's sentAt, overridden by the message's own.
    """
    get = message.get
    context = get("context") or {}
    traits = get("traits") or {}
    if kind == "identify" and not traits and isinstance(context.get("traits"), dict):
        traits = context["traits"]
    sent_timestamp = get("timestamp")
    original = utc_time(sent_timestamp) if sent_timestamp else None
    if "sentAt" in message:
        sent_at = utc_time(message["sentAt"]) if message["sentAt"] else None
    timestamp = corrected_timestamp(original, sent_at, received_at, max_skew)
    original_text = original.isoformat() if original else None
    if timestamp is received_at:
        timestamp_text = request["receivedAt"]
    elif timestamp is original:
        timestamp_text = original_text
    else:
        timestamp_text = timestamp.isoformat()
    ip = context.get("ip")
    user_agent = context.get("userAgent")
    return {
        "type": kind,
        "messageId": _text(get("messageId")) or str(uuid.uuid4()),
        "userId": _text(get("userId")),
        "anonymousId": _text(get("anonymousId")),
        "event": get("event") or None,
        "name": get("name") or None,
        "properties": get("properties") or {},
        "traits": traits,
        "context": context,
        "integrations": get("integrations") or {},
        "groupId": _text(get("groupId")),
        "previousId": _text(get("previousId")),
        "timestamp": timestamp_text,
        "originalTimestamp": original_text,
        "receivedAt": request["receivedAt"],
        "sourceId": request["sourceId"],
        "ip": ip if isinstance(ip, str) else request["ip"],
        "userAgent": user_agent if isinstance(user_agent, str) else request["userAgent"],
    }


def request_envelopes(record: dict[str, Any], max_skew: timedelta) -> Iterator[dict[str, Any]]:
    """One envelope per message of a batch or request record, with the context and
    integrations the call shares merged into each (the message's own keys win)."""
    request = record["request"]
    if "body" in record:
        shared = record["body"]
        messages = shared["batch"]
        for index, message_id in request.get("messageIds", {}).items():
            messages[int(index)]["messageId"] = message_id
    else:
        shared, messages = request, record["messages"]
    received_at = datetime.fromisoformat(request["receivedAt"])
    sent_at = utc_time(shared["sentAt"]) if shared.get("sentAt") else None
    call_type = request.get("type")
    shared_context = shared.get("context")
    shared_integrations = shared.get("integrations")
    for message in messages:
        if shared_context:
            message["context"] = {**shared_context, **(message.get("context") or {})}
        if shared_integrations and "integrations" not in message:
            message["integrations"] = shared_integrations
        kind = call_type or message["type"]
        yield build_envelope(message, kind, request, received_at, sent_at, max_skew)


def queued_envelopes(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The envelopes held by the items of queue payloads, in order."""
    max_skew = timedelta(seconds=get_settings().max_clock_skew_seconds)
    for item in items:
        if "request" in item:
            yield from request_envelopes(item, max_skew)
        else:
            yield item


def payload_envelopes(payload: bytes) -> list[dict[str, Any]]:
    """The envelopes of one queue payload."""
    return list(queued_envelopes(orjson.loads(payload)))


def payload_event_count(payload: bytes) -> int:
    return sum(_event_count(item) for item in orjson.loads(payload))


def _event_count(item: dict[str, Any]) -> int:
    if "body" in item:
        return len(item["body"]["batch"])
    return len(item["messages"]) if "request" in item else 1
