"""The Segment tracking spec at capture: decode a request body, validate each message, and
write the request's queue record (its format and expansion live in `capture.envelope`).

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

from capture.envelope import build_envelope

MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
# The types whose only required ids are userId or anonymousId.
USUAL_TYPES = frozenset({"identify", "track", "page", "screen"})
MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 200
MAX_TIMESTAMP_LENGTH = 40
MAX_PLAIN_LENGTH = min(MAX_ID_LENGTH, MAX_NAME_LENGTH)
ID_FIELDS = ("userId", "anonymousId", "messageId", "groupId", "previousId")
NAME_FIELDS = ("event", "name")
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
TIMESTAMP_FIELDS = ("timestamp", "sentAt")
EDGE_YEARS = (1, 9999)
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


def inflate(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The body's JSON text: gunzipped when so encoded, bounded so that a small bomb cannot
    expand past `limit` bytes."""
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
    return body


def parse_body(text: bytes) -> dict[str, Any]:
    """The JSON object of a body, with U+0000 removed from every string and key."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CaptureError(400, "invalid_json", f"the body is not valid JSON: {exc.msg}") from exc
    if not isinstance(parsed, dict):
        raise CaptureError(400, "invalid_json", "the body must be a JSON object")
    if may_hold_nul(text):
        parsed = without_nul(parsed)
    return parsed


def may_hold_nul(text: bytes) -> bool:
    """Whether a JSON text can hold U+0000: only a \\u0000 escape can write it (JSON forbids raw
    control characters). Looking for a backslash first is far faster than for the escape."""
    return b"\\" in text and ESCAPED_NUL in text


def without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key.replace("\x00", ""): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def _id_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "must be a string"
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters"
    if not text.isprintable() and CONTROL_CHARACTERS.search(text):
        return "must not contain control characters"
    return None


def _name_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if not value.isprintable() and CONTROL_CHARACTERS.search(value):
        return "must not contain control characters"
    return None


def _blank(value: Any) -> bool:
    return value is None or value == ""


def is_plainly_valid(message: dict[str, Any]) -> bool:
    """True for a message of the usual shape, which `message_problems` would pass: an
    identify, track, page or screen call with a messageId, short printable ids and names,
    objects where objects go and readable timestamps. False only means "ask
    `message_problems`", which names what is wrong, if anything; this runs per batch item."""
    get = message.get
    kind = get("type")
    if kind.__class__ is not str or kind not in USUAL_TYPES:
        return False
    user_id = get("userId")
    anonymous_id = get("anonymousId")
    message_id = get("messageId")
    if message_id is None or (user_id is None and anonymous_id is None):
        return False
    if "groupId" in message or "previousId" in message:
        return False
    name = get("name")
    event = get("event")
    if event is None and kind == "track":
        return False
    for text in (message_id, user_id, anonymous_id, event, name):
        if text is not None and not (
            text.__class__ is str and 0 < len(text) <= MAX_PLAIN_LENGTH and text.isprintable()
        ):
            return False
    for value in (get("properties"), get("traits"), get("context"), get("integrations")):
        if value is not None and value.__class__ is not dict:
            return False
    for value in (get("timestamp"), get("sentAt")):
        if value is not None:
            if value.__class__ is not str or len(value) > MAX_TIMESTAMP_LENGTH:
                return False
            try:
                year = datetime.fromisoformat(value).year
            except ValueError:
                return False
            if year in EDGE_YEARS:
                return False
    return True


def message_problems(message: dict[str, Any], kind: str | None) -> dict[str, str]:
    """What is wrong with one Segment message, by field name; empty when it can be queued.

    `kind` is the call's type for single calls; batch items carry their own `type`. Each
    check settles the usual value (a short printable string) inline: this runs per event."""
    errors: dict[str, str] = {}
    get = message.get
    if kind is None:
        kind = get("type")
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
            errors["type"] = "must be one of " + ", ".join(sorted(MESSAGE_TYPES))
            return errors
    for field in ID_FIELDS:
        value = get(field)
        if value is None or (
            value.__class__ is str and len(value) <= MAX_ID_LENGTH and value.isprintable()
        ):
            continue
        if value != "" and (problem := _id_problem(value)):
            errors[field] = problem
    user_id = get("userId")
    no_user_id = user_id is None or user_id == ""
    if "userId" not in errors and "anonymousId" not in errors and no_user_id:
        anonymous_id = get("anonymousId")
        if anonymous_id is None or anonymous_id == "":
            errors["userId"] = "userId or anonymousId is required"
        elif kind == "alias":
            errors["userId"] = "is required for alias"
    if kind == "group" and "groupId" not in errors and _blank(get("groupId")):
        errors["groupId"] = "is required for group"
    if kind == "alias" and "previousId" not in errors and _blank(get("previousId")):
        errors["previousId"] = "is required for alias"
    for field in OBJECT_FIELDS:
        value = get(field)
        if value is not None and not isinstance(value, dict):
            errors[field] = "must be a JSON object"
    for field in NAME_FIELDS:
        value = get(field)
        if value is None or value == "":
            if field == "event" and kind == "track":
                errors[field] = "is required"
        elif not (
            value.__class__ is str and len(value) <= MAX_NAME_LENGTH and value.isprintable()
        ) and (problem := _name_problem(value)):
            errors[field] = problem
    for field in TIMESTAMP_FIELDS:
        value = get(field)
        if value is not None and value != "" and (problem := _timestamp_problem(value)):
            errors[field] = problem
    return errors


def _timestamp_problem(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP_LENGTH:
        return "must be an ISO 8601 date-time string"
    try:
        parsed = datetime.fromisoformat(value)
        # Only a date at the calendar's edge can fall outside it once moved to UTC.
        if parsed.year in EDGE_YEARS and parsed.tzinfo is not None:
            parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return "is not a valid ISO 8601 date-time"
    return None


def envelope_for_single(
    body: dict[str, Any],
    kind: str,
    received_at: datetime,
    request_meta: dict[str, Any],
    max_skew: timedelta,
) -> dict[str, Any]:
    """A finished queue envelope for one message, for producers other than the tracking API.

    `request_meta` holds sourceId, ip and userAgent."""
    errors = message_problems(body, kind)
    if errors:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    request = {**request_meta, "receivedAt": received_at.isoformat()}
    return build_envelope(body, kind, request, received_at, None, max_skew)


def single_record(body: dict[str, Any], kind: str, request: dict[str, Any]) -> bytes:
    """The queue payload of a single call: one request record holding the message.

    `request` holds sourceId, receivedAt (a datetime), ip and userAgent."""
    errors = message_problems(body, kind)
    if errors:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    if "writeKey" in body:
        body = {key: value for key, value in body.items() if key != "writeKey"}
    if _blank(body.get("messageId")):
        body = {**body, "messageId": str(uuid.uuid4())}
    return orjson.dumps([{"request": {**request, "type": kind}, "messages": [body]}])


def batch_record(
    text: bytes, body: dict[str, Any], request: dict[str, Any], max_event_bytes: int
) -> bytes:
    """The queue payload of a batch call: one request record holding the body as sent.

    `body` is parsed from the JSON `text`. The record embeds `text` itself, so events are not
    encoded again, unless the body must change (a write key to leave out, NULs removed);
    messages sent without a messageId get one in the request's `messageIds`, by index."""
    batch = body.get("batch")
    if not isinstance(batch, list) or not batch:
        raise CaptureError(
            422, "invalid", "batch must be a non-empty list", {"batch": "must be a non-empty list"}
        )
    errors: dict[str, str] = {}
    sent_at = body.get("sentAt")
    if not _blank(sent_at) and (problem := _timestamp_problem(sent_at)):
        errors["sentAt"] = problem
    for field in ("context", "integrations"):
        value = body.get(field)
        if value is not None and not isinstance(value, dict):
            errors[field] = "must be a JSON object"
    if errors:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    # No item can be larger than the whole body.
    if len(text) > max_event_bytes:
        _check_item_sizes(batch, max_event_bytes)

    message_ids: dict[str, str] = {}
    for index, item in enumerate(batch):
        if item.__class__ is dict and is_plainly_valid(item):
            continue
        if not isinstance(item, dict):
            errors[f"batch.{index}"] = "must be a JSON object"
            continue
        problems = message_problems(item, None)
        if problems:
            errors.update((f"batch.{index}.{field}", why) for field, why in problems.items())
        elif _blank(item.get("messageId")):
            message_ids[str(index)] = str(uuid.uuid4())
    if errors:
        raise CaptureError(422, "invalid", _summary(errors), errors)
    if "writeKey" in body or may_hold_nul(text):
        text = orjson.dumps({key: value for key, value in body.items() if key != "writeKey"})
    if message_ids:
        request = {**request, "messageIds": message_ids}
    return b'[{"request":%b,"body":%b}]' % (orjson.dumps(request), text)


def _check_item_sizes(batch: list[Any], max_event_bytes: int) -> None:
    for index, item in enumerate(batch):
        if len(orjson.dumps(item)) > max_event_bytes:
            raise CaptureError(
                413,
                "too_large",
                f"batch.{index} is larger than {max_event_bytes} bytes",
                {f"batch.{index}": f"is larger than {max_event_bytes} bytes"},
            )


def _summary(errors: dict[str, str]) -> str:
    shown = list(errors.items())[:5]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid message: " + "; ".join(f"{k} {v}" for k, v in shown) + more
