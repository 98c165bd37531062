"""The public tracking API (Segment-compatible paths), authenticated by a source's write key.

Answers 200 only after the request's events are durably queued; 503 when the queue can't
take them, so the client retries.
"""

from __future__ import annotations

import base64
import binascii
import gc
import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from capture.queue import get_queue
from capture.sources import SourceInfo, normalize_origin, write_keys
from capture.tracking import (
    CaptureError,
    batch_record,
    inflate,
    parse_body,
    single_record,
    too_large,
)
from core.clock import clock
from core.keys import ADMIN_KEY_PREFIX
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["tracking"])

SUCCESS = orjson.dumps({"success": True})
SUCCESS_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(SUCCESS)).encode()),
]
SINGLE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
QUEUE_UNAVAILABLE = CaptureError(503, "unavailable", "the event queue is unavailable; retry later")


def write_key_from(headers: Mapping[str, str], body: dict[str, Any] | None) -> str | None:
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and encoded:
        username = basic_username(encoded)
        if username:
            return username
    if body is not None and isinstance(body.get("writeKey"), str):
        return body["writeKey"]
    return None


@lru_cache(maxsize=4096)
def basic_username(encoded: str) -> str:
    """The username of Basic credentials; cached, as a client sends the same header each time."""
    try:
        return base64.b64decode(encoded, validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


@lru_cache(maxsize=1024)
def source_text(source_id: uuid.UUID) -> str:
    return str(source_id)


def authenticate(write_key: str | None) -> SourceInfo:
    if not write_key:
        raise CaptureError(401, "unauthorized", "a write key is required (Basic auth or writeKey)")
    if write_key.startswith(ADMIN_KEY_PREFIX + "_"):
        raise CaptureError(401, "unauthorized", "admin keys cannot capture; use a write key")
    source = write_keys.lookup(write_key)
    if source is None:
        raise CaptureError(401, "unauthorized", "the write key is not valid")
    return source


def cors_headers(headers: Mapping[str, str], source: SourceInfo) -> dict[str, str]:
    origin = headers.get("origin")
    if origin is None:
        return {}
    if normalize_origin(origin) not in source.allowed_origins:
        raise CaptureError(403, "origin_not_allowed", f"origin {origin} is not allowed")
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def request_meta(request: Request, source: SourceInfo) -> dict[str, Any]:
    return {
        "sourceId": str(source.id),
        "ip": request.client.host if request.client else None,
        "userAgent": request.headers.get("user-agent"),
    }


async def read_body(request: Request, limit: int) -> bytes:
    """Reads at most `limit` bytes: a larger body is refused before it is all in memory."""
    return await read_asgi_body(request.receive, request.headers, limit)


async def read_asgi_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise CaptureError(400, "disconnected", "the client went away mid-request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Incoming:
    """What accepting needs of a request, read once from the ASGI scope."""

    __slots__ = ("client_ip", "headers", "receive")

    def __init__(self, headers: dict[str, str], client_ip: str | None, receive: Receive) -> None:
        self.headers = headers  # lower-case names
        self.client_ip = client_ip
        self.receive = receive

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> Incoming:
        client = scope.get("client")
        return cls(
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            client[0] if client else None,
            receive,
        )


Answer = tuple[int, bytes, dict[str, str]]


def error_answer(error: CaptureError, headers: dict[str, str] | None = None) -> Answer:
    body = {"error": {"code": error.code, "message": error.message, "fields": error.fields}}
    return error.status, orjson.dumps(body), headers or {}


async def accept(incoming: Incoming, kind: str) -> Answer:
    settings = get_settings()
    try:
        raw = await read_asgi_body(incoming.receive, incoming.headers, body_limit(kind, settings))
    except CaptureError as error:
        return error_answer(error)
    with collector_paused():
        answer, payload = admit(incoming, raw, kind, settings)
    if payload is None:
        return answer
    try:
        await get_queue().put(payload)
    except Exception as exc:
        # Whatever stopped the queue (Redis down, an unwritable file), these events are not
        # stored, so the client must hear 503 and retry them rather than a 2xx or a 500.
        log.warning("capture queue unavailable: %r", exc)
        return error_answer(QUEUE_UNAVAILABLE, {**answer[2], "Retry-After": "1"})
    return answer


def admit(
    incoming: Incoming, raw: bytes, kind: str, settings: Settings
) -> tuple[Answer, bytes | None]:
    """Checks a request and writes its queue payload: the answer to give once the payload is
    queued, and the payload (None when there is nothing to queue, the answer is final)."""
    headers: dict[str, str] = {}
    try:
        encoding = incoming.headers.get("content-encoding", "")
        text = inflate(raw, encoding, body_limit(kind, settings))
        body = parse_body(text)
        source = authenticate(write_key_from(incoming.headers, body))
        headers = cors_headers(incoming.headers, source)
        if source.honor_do_not_track and incoming.headers.get("dnt") == "1":
            return (200, SUCCESS, headers), None
        request = {
            "sourceId": source_text(source.id),
            "receivedAt": clock.now(),  # orjson writes it as isoformat() would, and faster
            "ip": incoming.client_ip,
            "userAgent": incoming.headers.get("user-agent"),
        }
        if kind == "batch":
            payload = batch_record(text, body, request, settings.max_event_bytes)
        else:
            payload = single_record(body, kind, request)
    except CaptureError as error:
        return error_answer(error, headers), None
    return (200, SUCCESS, headers), payload


def body_limit(kind: str, settings: Settings) -> int:
    return settings.max_batch_bytes if kind == "batch" else settings.max_event_bytes


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keeps the cyclic garbage collector from running while a body is parsed and checked.

    Parsing a batch allocates hundreds of dicts and lists, enough to start a collection that
    would scan every other request's objects too; here they are all freed again before the
    collector may run, so they never count towards one."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _endpoint(kind: str) -> Any:
    async def endpoint(request: Request) -> Response:
        status, body, headers = await accept(
            Incoming.from_scope(request.scope, request.receive), kind
        )
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    endpoint.__name__ = f"capture_{kind}"
    endpoint.__doc__ = f"Segment `{kind}` call. Authenticate with the write key as Basic user."
    return endpoint


for _kind in (*SINGLE_TYPES, "batch"):
    router.add_api_route(f"/v1/{_kind}", _endpoint(_kind), methods=["POST"])
router.add_api_route("/v1/import", _endpoint("batch"), methods=["POST"], include_in_schema=False)

CAPTURE_PATHS = {f"/v1/{kind}": kind for kind in (*SINGLE_TYPES, "batch")} | {"/v1/import": "batch"}
INTERNAL_ERROR = CaptureError(500, "internal", "internal error")


class CaptureFastPath:
    """Pure ASGI middleware that hands the tracking calls straight to `accept`.

    FastAPI's routing, request wrapping and dependency solving cost several times the work of
    accepting an event; the routes above stay registered for the OpenAPI docs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = CAPTURE_PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if kind is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            status, body, headers = await accept(Incoming.from_scope(scope, receive), kind)
        except Exception:
            log.exception("capture request failed")
            status, body, headers = error_answer(INTERNAL_ERROR)
        if status == 200 and not headers:
            raw_headers = SUCCESS_HEADERS
        else:
            raw_headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers.items()
                ),
            ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


@router.options("/v1/{path:path}", include_in_schema=False)
async def preflight(request: Request) -> Response:
    # The browser sends no credentials in a preflight, so the origin is checked against the
    # source on the real request; here we only say which headers may follow.
    origin = request.headers.get("origin", "*")
    return Response(
        status_code=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Authorization, Content-Encoding",
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        },
    )
