"""The Segment tracking spec: decode a request body, validate each message, build envelopes.

Hand-written rather than pydantic because this is the hottest path in the service and the
checks are simple; errors still name the field (`batch.3.userId`).
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 200


class CaptureError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}


def decode_body(body: bytes, content_encoding: str, limit: int) -> dict[str, Any]:
    """Gunzips (bounded, so a small bomb cannot expand past the limit) and parses JSON."""
    if len(body) > limit:
        raise CaptureError(413, "too_large", f"the body is larger than {limit} bytes")
    if content_encoding.strip().lower() == "gzip":
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = inflater.decompress(body, limit + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise CaptureError(400, "invalid_gzip", "the body is not valid gzip") from exc
        if len(body) > limit or inflater.unconsumed_tail:
            raise CaptureError(413, "too_large", f"the body is larger than {limit} bytes")
    elif content_encoding.strip() not in ("", "identity"):
        raise CaptureError(415, "unsupported_encoding", "Content-Encoding must be gzip or none")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CaptureError(400, "invalid_json", f"the body is not valid JSON: {exc.msg}") from exc
    if not isinstance(parsed, dict):
        raise CaptureError(400, "invalid_json", "the body must be a JSON object")
    return parsed


def parse_timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("must be an ISO 8601 date-time string")
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _id(value: Any, field: str, errors: dict[str, str]) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors[field] = "must be a string"
        return None
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        errors[field] = f"must be at most {MAX_ID_LENGTH} characters"
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
    return value


def build_envelope(
    message: dict[str, Any],
    kind: str | None,
    prefix: str,
    received_at: datetime,
    request_meta: dict[str, Any],
    max_skew: timedelta,
    errors: dict[str, str],
) -> dict[str, Any] | None:
    """Validates one Segment message; returns the queue envelope or records errors."""
    before = len(errors)
    if kind is None:
        kind = message.get("type")
        if kind not in MESSAGE_TYPES:
            errors[prefix + "type"] = "must be one of " + ", ".join(sorted(MESSAGE_TYPES))
            return None
    user_id = _id(message.get("userId"), prefix + "userId", errors)
    anonymous_id = _id(message.get("anonymousId"), prefix + "anonymousId", errors)
    if user_id is None and anonymous_id is None and prefix + "userId" not in errors:
        errors[prefix + "userId"] = "userId or anonymousId is required"
    message_id = _id(message.get("messageId"), prefix + "messageId", errors)
    properties = _object(message.get("properties"), prefix + "properties", errors)
    traits = _object(message.get("traits"), prefix + "traits", errors)
    context = _object(message.get("context"), prefix + "context", errors)
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
    try:
        original = parse_timestamp(message.get("timestamp"))
    except ValueError as exc:
        errors[prefix + "timestamp"] = str(exc) if "ISO" in str(exc) else "is not a valid date-time"
        original = None
    try:
        sent_at = parse_timestamp(message.get("sentAt") or request_meta.get("sentAt"))
    except ValueError:
        errors[prefix + "sentAt"] = "is not a valid date-time"
        sent_at = None
    if len(errors) > before:
        return None

    # Segment's clock-skew correction: the device clock may be wrong, but the gap between
    # the event and the send is measured on that same clock, so it carries over.
    timestamp = original or received_at
    if original is not None and sent_at is not None:
        timestamp = received_at - (sent_at - original)
    if timestamp > received_at + max_skew:
        timestamp = received_at

    return {
        "type": kind,
        "messageId": message_id or str(uuid.uuid4()),
        "userId": user_id,
        "anonymousId": anonymous_id,
        "event": event,
        "name": name,
        "properties": properties,
        "traits": traits if traits or kind != "identify" else context.get("traits") or {},
        "context": context,
        "groupId": group_id,
        "previousId": previous_id,
        "timestamp": timestamp.isoformat(),
        "originalTimestamp": original.isoformat() if original else None,
        "receivedAt": received_at.isoformat(),
        "sourceId": request_meta["sourceId"],
        "ip": context.get("ip") if isinstance(context.get("ip"), str) else request_meta["ip"],
        "userAgent": context.get("userAgent")
        if isinstance(context.get("userAgent"), str)
        else request_meta["userAgent"],
    }


def envelopes_for_batch(
    body: dict[str, Any],
    received_at: datetime,
    request_meta: dict[str, Any],
    max_skew: timedelta,
    max_event_bytes: int,
) -> list[dict[str, Any]]:
    batch = body.get("batch")
    if not isinstance(batch, list) or not batch:
        raise CaptureError(422, "invalid", "batch must be a non-empty list", {"batch": "required"})
    shared_context = body.get("context") if isinstance(body.get("context"), dict) else None
    shared_integrations = body.get("integrations")
    errors: dict[str, str] = {}
    envelopes: list[dict[str, Any]] = []
    for index, item in enumerate(batch):
        prefix = f"batch.{index}."
        if not isinstance(item, dict):
            errors[prefix.rstrip(".")] = "must be a JSON object"
            continue
        if max_event_bytes and len(orjson.dumps(item)) > max_event_bytes:
            errors[prefix.rstrip(".")] = f"is larger than {max_event_bytes} bytes"
            continue
        if shared_context:
            item = {**item, "context": {**shared_context, **(item.get("context") or {})}}
        if isinstance(shared_integrations, dict) and "integrations" not in item:
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
    envelope = build_envelope(body, kind, "", received_at, request_meta, max_skew, errors)
    if envelope is None:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    return envelope


def _summary(errors: dict[str, str]) -> str:
    shown = list(errors.items())[:5]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid message: " + "; ".join(f"{k} {v}" for k, v in shown) + more
