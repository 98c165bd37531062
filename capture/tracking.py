"""The Segment tracking spec: decode a request body, validate each message, build envelopes.

Hand-written rather than pydantic because this is the hottest path in the service and the
checks are simple; errors still name the field (`batch.3.userId`).

Normalisation (documented in the README): U+0000 is removed from every string and key
(PostgreSQL cannot store it); other control characters are refused in ids and names but
kept in properties, traits and context; a timestamp more than `max_clock_skew_seconds`
ahead of the server is replaced by `receivedAt`, the sent value kept as `originalTimestamp`.
"""

from __future__ import annotations

import re
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 200
MAX_TIMESTAMP_LENGTH = 40
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
ESCAPED_NUL = b"\\u0000"


class CaptureError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}


def too_large(limit: int) -> CaptureError:
    return CaptureError(413, "too_large", f"the body is larger than {limit} bytes")


def decode_body(body: bytes, content_encoding: str, limit: int) -> dict[str, Any]:
    """Gunzips (bounded, so a small bomb cannot expand past the limit) and parses JSON."""
    if len(body) > limit:
        raise too_large(limit)
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise CaptureError(400, "invalid_gzip", "the body is not valid gzip") from exc
        if len(body) > limit or inflater.unconsumed_tail:
            raise too_large(limit)
        if not inflater.eof:
            raise CaptureError(400, "invalid_gzip", "the gzip body is truncated")
    elif encoding not in ("", "identity"):
        raise CaptureError(415, "unsupported_encoding", "Content-Encoding must be gzip or none")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CaptureError(400, "invalid_json", f"the body is not valid JSON: {exc.msg}") from exc
    if not isinstance(parsed, dict):
        raise CaptureError(400, "invalid_json", "the body must be a JSON object")
    # A NUL can only come from a \u0000 escape (JSON forbids raw control characters), so
    # the byte search keeps the walk off the hot path.
    if ESCAPED_NUL in body:
        parsed = without_nul(parsed)
    return parsed


def without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key.replace("\x00", ""): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def parse_timestamp(value: Any, field: str, errors: dict[str, str]) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP_LENGTH:
        errors[field] = "must be an ISO 8601 date-time string"
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        errors[field] = "is not a valid ISO 8601 date-time"
        return None


def _id(value: Any, field: str, errors: dict[str, str]) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors[field] = "must be a string"
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ID_LENGTH:
        errors[field] = f"must be at most {MAX_ID_LENGTH} characters"
        return None
    if not text.isprintable() and CONTROL_CHARACTERS.search(text):
        errors[field] = "must not contain control characters"
        return None
    return text


def _object(value: Any, field: str, errors: dict[str, str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors[field] = "must be a JSON object"
        return {}
    return value


def _name(value: Any, field: str, errors: dict[str, str], required: bool) -> str | None:
    if value is None or value == "":
        if required:
            errors[field] = "is required"
        return None
    if not isinstance(value, str):
        errors[field] = "must be a string"
        return None
    if len(value) > MAX_NAME_LENGTH:
        errors[field] = f"must be at most {MAX_NAME_LENGTH} characters"
        return None
    if not value.isprintable() and CONTROL_CHARACTERS.search(value):
        errors[field] = "must not contain control characters"
        return None
    return value


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


def build_envelope(
    message: dict[str, Any],
    kind: str | None,
    prefix: str,
    received_at: datetime,
    request_meta: dict[str, Any],
    max_skew: timedelta,
    errors: dict[str, str],
) -> dict[str, Any] | None:
    """Validates one Segment message; returns the queue envelope or records errors.

    `request_meta` holds sourceId, ip, userAgent, sentAt and receivedAt (already a string).
    """
    before = len(errors)
    if kind is None:
        kind = message.get("type")
        if kind not in MESSAGE_TYPES:
            errors[prefix + "type"] = "must be one of " + ", ".join(sorted(MESSAGE_TYPES))
            return None
    user_id = _id(message.get("userId"), prefix + "userId", errors)
    anonymous_id = _id(message.get("anonymousId"), prefix + "anonymousId", errors)
    if user_id is None and anonymous_id is None and len(errors) == before:
        errors[prefix + "userId"] = "userId or anonymousId is required"
    message_id = _id(message.get("messageId"), prefix + "messageId", errors)
    properties = _object(message.get("properties"), prefix + "properties", errors)
    traits = _object(message.get("traits"), prefix + "traits", errors)
    context = _object(message.get("context"), prefix + "context", errors)
    integrations = _object(message.get("integrations"), prefix + "integrations", errors)
    event = _name(message.get("event"), prefix + "event", errors, required=kind == "track")
    name = _name(message.get("name"), prefix + "name", errors, required=False)
    group_id = _id(message.get("groupId"), prefix + "groupId", errors)
    previous_id = _id(message.get("previousId"), prefix + "previousId", errors)
    if kind == "group" and group_id is None and prefix + "groupId" not in errors:
        errors[prefix + "groupId"] = "is required for group"
    if kind == "alias" and previous_id is None and prefix + "previousId" not in errors:
        errors[prefix + "previousId"] = "is required for alias"
    if kind == "alias" and user_id is None and prefix + "userId" not in errors:
        errors[prefix + "userId"] = "is required for alias"
    original = parse_timestamp(message.get("timestamp"), prefix + "timestamp", errors)
    sent_at = request_meta["sentAt"]
    if "sentAt" in message:
        sent_at = parse_timestamp(message["sentAt"], prefix + "sentAt", errors)
    if len(errors) > before:
        return None

    if kind == "identify" and not traits and isinstance(context.get("traits"), dict):
        traits = context["traits"]
    ip = context.get("ip")
    user_agent = context.get("userAgent")
    timestamp = corrected_timestamp(original, sent_at, received_at, max_skew)
    return {
        "type": kind,
        "messageId": message_id or str(uuid.uuid4()),
        "userId": user_id,
        "anonymousId": anonymous_id,
        "event": event,
        "name": name,
        "properties": properties,
        "traits": traits,
        "context": context,
        "integrations": integrations,
        "groupId": group_id,
        "previousId": previous_id,
        "timestamp": request_meta["receivedAt"]
        if timestamp is received_at
        else timestamp.isoformat(),
        "originalTimestamp": original.isoformat() if original else None,
        "receivedAt": request_meta["receivedAt"],
        "sourceId": request_meta["sourceId"],
        "ip": ip if isinstance(ip, str) else request_meta["ip"],
        "userAgent": user_agent if isinstance(user_agent, str) else request_meta["userAgent"],
    }


def request_sent_at(body: dict[str, Any]) -> datetime | None:
    """The body's `sentAt`, shared by every message of a batch that has none of its own."""
    errors: dict[str, str] = {}
    sent_at = parse_timestamp(body.get("sentAt"), "sentAt", errors)
    if errors:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    return sent_at


def envelopes_for_batch(
    body: dict[str, Any],
    received_at: datetime,
    request_meta: dict[str, Any],
    max_skew: timedelta,
    max_event_bytes: int,
) -> list[dict[str, Any]]:
    batch = body.get("batch")
    if not isinstance(batch, list) or not batch:
        raise CaptureError(
            422, "invalid", "batch must be a non-empty list", {"batch": "must be a non-empty list"}
        )
    request_meta = {
        **request_meta,
        "sentAt": request_sent_at(body),
        "receivedAt": received_at.isoformat(),
    }
    errors: dict[str, str] = {}
    shared_context = _object(body.get("context"), "context", errors)
    shared_integrations = _object(body.get("integrations"), "integrations", errors)
    if errors:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    envelopes: list[dict[str, Any]] = []
    for index, item in enumerate(batch):
        prefix = f"batch.{index}."
        if not isinstance(item, dict):
            errors[f"batch.{index}"] = "must be a JSON object"
            continue
        if len(orjson.dumps(item)) > max_event_bytes:
            raise CaptureError(
                413,
                "too_large",
                f"batch.{index} is larger than {max_event_bytes} bytes",
                {f"batch.{index}": f"is larger than {max_event_bytes} bytes"},
            )
        own_context = item.get("context")
        if shared_context and (own_context is None or isinstance(own_context, dict)):
            item = {**item, "context": {**shared_context, **(own_context or {})}}
        if shared_integrations and "integrations" not in item:
            item = {**item, "integrations": shared_integrations}
        envelope = build_envelope(item, None, prefix, received_at, request_meta, max_skew, errors)
        if envelope is not None:
            envelopes.append(envelope)
    if errors:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    return envelopes


def envelope_for_single(
    body: dict[str, Any],
    kind: str,
    received_at: datetime,
    request_meta: dict[str, Any],
    max_skew: timedelta,
) -> dict[str, Any]:
    errors: dict[str, str] = {}
    request_meta = {**request_meta, "sentAt": None, "receivedAt": received_at.isoformat()}
    envelope = build_envelope(body, kind, "", received_at, request_meta, max_skew, errors)
    if envelope is None:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    return envelope


def _summary(errors: dict[str, str]) -> str:
    shown = list(errors.items())[:5]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid message: " + "; ".join(f"{k} {v}" for k, v in shown) + more
