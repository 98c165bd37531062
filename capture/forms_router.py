"""Forms over HTTP: the admin API under /api/v1/forms, and the public side a website uses
(embed script, standalone page, submission endpoint) under /v1/forms."""

from __future__ import annotations

import html
import logging
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from api.deps import MarketerKey, SessionDep
from api.errors import ApiError
from capture import forms
from capture.forms import FormCreate, FormPage, FormRead, FormUpdate
from capture.models import Form, Source
from capture.sources import normalize_origin
from capture.tracking import CaptureError
from capture.tracking_router import read_body
from core.settings import get_settings

log = logging.getLogger(__name__)
admin_router = APIRouter(prefix="/api/v1/forms", tags=["forms"])
public_router = APIRouter(prefix="/v1/forms", tags=["forms (public)"])

EMBED_TEMPLATE = (Path(__file__).with_name("form_embed.js")).read_text()
MAX_SUBMISSION_BYTES = 64 * 1024


def form_read(form: Form) -> FormRead:
    read = FormRead.model_validate(form)
    read.embed = forms.embed_urls(form.id, get_settings().public_url)
    return read


@admin_router.post("", status_code=201)
def create_form(body: FormCreate, session: SessionDep, _key: MarketerKey) -> FormRead:
    """Defines a form for a source. Errors name the field, e.g. `fields.2.type`."""
    return form_read(forms.create_form(session, body))


@admin_router.get("")
def list_forms(
    session: SessionDep,
    _key: MarketerKey,
    source_id: uuid.UUID | None = None,
    include_archived: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> FormPage:
    """Forms, newest first; archived ones only with `include_archived=true`."""
    found = forms.list_forms(session, source_id, include_archived, limit, offset)
    return FormPage(items=[form_read(form) for form in found])


@admin_router.get("/{form_id}")
def get_form(form_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> FormRead:
    return form_read(forms.get_form(session, form_id))


@admin_router.patch("/{form_id}")
def update_form(
    form_id: uuid.UUID, body: FormUpdate, session: SessionDep, _key: MarketerKey
) -> FormRead:
    """Changes only the keys sent; `fields` and `consents` are replaced whole."""
    return form_read(forms.update_form(session, forms.get_form(session, form_id), body))


@admin_router.delete("/{form_id}")
def archive_form(form_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> FormRead:
    """Archives the form: it stops rendering and accepting submissions; its submissions stay."""
    return form_read(forms.archive_form(session, forms.get_form(session, form_id)))


@public_router.get("/{form_id}/embed.js", include_in_schema=False)
def embed_script(form_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    form, _source = forms.active_form(session, form_id)
    definition = orjson.dumps(forms.public_definition(form, str(request.base_url))).decode()
    return Response(
        EMBED_TEMPLATE.replace("__NURTURE_FORM__", definition),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=60"},
    )


@public_router.get("/{form_id}", include_in_schema=False)
def standalone_page(form_id: uuid.UUID, session: SessionDep) -> HTMLResponse:
    form, _source = forms.active_form(session, form_id)
    title = html.escape(form.name)
    return HTMLResponse(
        '<!doctype html><html><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title></head><body><h1>{title}</h1>"
        f'<div data-nurture-form="{form.id}"></div>'
        f'<script src="/v1/forms/{form.id}/embed.js"></script></body></html>'
    )


@public_router.post("/{form_id}/submit")
async def submit_form(form_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    """A visitor's submission, as JSON (answered with JSON) or as a site's own HTML form
    (`application/x-www-form-urlencoded`, answered with a redirect or a thank-you page).
    Invalid input answers 422 naming each field and stores nothing."""
    form, source = await run_in_threadpool(forms.active_form, session, form_id)
    headers = cors_headers(request, source)
    try:
        raw, is_html_form = await submitted_values(request)
    except CaptureError as error:
        raise ApiError(error.status, error.code, error.message, error.fields, headers) from error
    visitor = forms.Visitor(
        anonymous_id=forms.visitor_id(raw.get(forms.VISITOR_KEY))
        or forms.visitor_id(request.cookies.get(forms.VISITOR_KEY)),
        page_url=forms.page_url(raw.get(forms.PAGE_URL_KEY))
        or forms.page_url(request.headers.get("referer")),
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
    try:
        outcome = await run_in_threadpool(forms.submit, session, form, raw, visitor)
    except ApiError as error:
        error.headers = {**headers, **(error.headers or {})}
        raise
    except Exception as exc:
        # The queue refused the submission: the raise rolls the stored row back and the
        # visitor is asked to retry, as the tracking API does.
        log.warning("form submission not queued: %r", exc)
        raise ApiError(
            503,
            "unavailable",
            "submissions are unavailable; retry later",
            headers={**headers, "Retry-After": "1"},
        ) from exc
    if is_html_form:
        if outcome.redirect_url:
            return RedirectResponse(outcome.redirect_url, status_code=303, headers=headers)
        return HTMLResponse(thank_you_page(outcome.message), headers=headers)
    body = {"success": True, "message": outcome.message, "redirect_url": outcome.redirect_url}
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def cors_headers(request: Request, source: Source) -> dict[str, str]:
    """Browsers send Origin with every POST; it must be one of the source's sites or this
    service itself (the standalone page)."""
    origin = request.headers.get("origin")
    if origin is None:
        return {}
    own = normalize_origin(f"{request.url.scheme}://{request.url.netloc}")
    allowed = {*(source.allowed_origins or ()), own}
    if normalize_origin(origin) not in allowed:
        raise ApiError(403, "origin_not_allowed", f"origin {origin} may not submit this form")
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


async def submitted_values(request: Request) -> tuple[dict[str, Any], bool]:
    """The submitted values and whether they came from a plain HTML form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, MAX_SUBMISSION_BYTES)
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=200
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise CaptureError(400, "invalid_body", "the form body could not be read") from exc
        return dict(pairs), True
    if content_type in ("application/json", "text/plain"):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CaptureError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise CaptureError(400, "invalid_json", "the body must be a JSON object")
        return parsed, False
    raise CaptureError(
        415,
        "unsupported_media_type",
        "send application/json or application/x-www-form-urlencoded",
    )


def thank_you_page(message: str) -> str:
    text = html.escape(message)
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Thank you</title></head>'
        f"<body><p>{text}</p></body></html>"
    )
