"""The browser side of capture: the tracking snippet sites embed, and the 1x1 GIF pixel for
pages and emails that cannot run JavaScript."""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Request, Response

from capture.queue import get_queue
from capture.tracking import CaptureError, envelope_for_single
from capture.tracking_router import authenticate, request_meta
from core.clock import clock
from core.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["tracking"])

SNIPPET = Path(__file__).with_name("snippet.js").read_bytes()
SNIPPET_GZIP = gzip.compress(SNIPPET, mtime=0)
SNIPPET_ETAG = '"' + hashlib.sha256(SNIPPET).hexdigest()[:20] + '"'
TRANSPARENT_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
PIXEL_TYPES = ("track", "page")
# Query parameters that shape the message; every other one becomes a property.
PIXEL_FIELDS = frozenset(
    {"writeKey", "type", "anonymousId", "userId", "event", "name", "messageId", "timestamp"}
)
PAGE_FIELDS = ("url", "title", "referrer")
MAX_PIXEL_PROPERTIES = 50


@router.get("/v1/snippet.js", include_in_schema=False)
def snippet(request: Request) -> Response:
    """The tracking snippet; long-cached, revalidated by ETag, gzipped when the browser can."""
    headers = {
        "Cache-Control": "public, max-age=3600",
        "ETag": SNIPPET_ETAG,
        "Vary": "Accept-Encoding",
    }
    if request.headers.get("if-none-match") == SNIPPET_ETAG:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(
            SNIPPET_GZIP,
            media_type="application/javascript",
            headers={**headers, "Content-Encoding": "gzip"},
        )
    return Response(SNIPPET, media_type="application/javascript", headers=headers)


@router.get("/v1/pixel.gif", tags=["tracking"])
async def pixel(request: Request) -> Response:
    """A 1x1 GIF that records one `track` (`event=...`) or `page` (`type=page&url=...`) call.

    Query: `writeKey`, `anonymousId` or `userId`, `type`, `event`, `name`, `url`, `title`,
    `referrer`, `messageId`, `timestamp`; any other parameter becomes a property. The answer
    is always the GIF, never cached; bad input or a wrong write key records nothing."""
    params = dict(request.query_params)
    try:
        source = authenticate(params.get("writeKey"))
        if source.honor_do_not_track and request.headers.get("dnt") == "1":
            return gif()
        settings = get_settings()
        message, kind = pixel_message(params, request.headers.get("referer"))
        if len(orjson.dumps(message)) > settings.max_event_bytes:
            return gif()
        envelope = envelope_for_single(
            message,
            kind,
            clock.now(),
            request_meta(request, source),
            timedelta(seconds=settings.max_clock_skew_seconds),
        )
    except CaptureError:
        return gif()
    try:
        await get_queue().put(orjson.dumps([envelope]))
    except Exception as exc:
        # Not stored: 503 tells a client that retries; an <img> just shows nothing either way.
        log.warning("capture queue unavailable: %r", exc)
        return gif(503)
    return gif()


def gif(status: int = 200) -> Response:
    return Response(
        TRANSPARENT_GIF,
        status_code=status,
        media_type="image/gif",
        headers={"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache"},
    )


def pixel_message(params: dict[str, str], referer: str | None) -> tuple[dict[str, Any], str]:
    kind = params.get("type") or "track"
    if kind not in PIXEL_TYPES:
        raise CaptureError(422, "invalid", "type must be track or page")
    message: dict[str, Any] = {key: params[key] for key in PIXEL_FIELDS if params.get(key)}
    properties = {
        key: value
        for key, value in params.items()
        if key not in PIXEL_FIELDS and key not in PAGE_FIELDS
    }
    if len(properties) > MAX_PIXEL_PROPERTIES:
        raise CaptureError(422, "invalid", f"at most {MAX_PIXEL_PROPERTIES} properties")
    # Without a url, an <img> on a page that runs no JavaScript still names that page.
    url = params.get("url") or (referer if kind == "page" else None)
    page = {key: params[key] for key in PAGE_FIELDS if params.get(key)}
    if url:
        try:
            page["path"] = urlsplit(url).path
        except ValueError as exc:
            raise CaptureError(422, "invalid", "url is not a valid URL") from exc
        page["url"] = url
        if kind == "page":
            properties = {**page, **properties}
    message["properties"] = properties
    if page:
        message["context"] = {"page": page}
    return message, kind
