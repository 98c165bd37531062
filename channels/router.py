"""Channels HTTP: the admin API under /api/v1, the public tracking and unsubscribe pages, and
the provider callbacks (bounces, Aliyun receipts and replies)."""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import TypeAdapter, ValidationError

from api.deps import MarketerKey, SessionDep
from api.errors import ApiError, field_errors
from channels import feedback, service, tokens, tracking, unsubscribe
from channels.models import Delivery, Robot
from channels.records import delivery_contact
from channels.schemas import (
    Channel,
    DeadLetterRead,
    DeliveryPage,
    DeliveryRead,
    EmailFeedback,
    HealthReport,
    InboundEmail,
    LayoutCreate,
    LayoutRead,
    Preview,
    PreviewRequest,
    RobotCreate,
    RobotRead,
    SendRequest,
    SmsReply,
    SmsReport,
    SuppressionCreate,
    SuppressionPage,
    SuppressionRead,
    TemplateChannel,
    TemplateCreate,
    TemplateRead,
    TemplateUpdate,
    TestSendRequest,
    TestSendResult,
    WebhookEndpointCreate,
    WebhookEndpointRead,
    WebhookEndpointWithSecret,
)
from channels.settings import get_channel_settings

admin = APIRouter(prefix="/api/v1", tags=["channels"])
public = APIRouter(include_in_schema=False)
hooks = APIRouter(prefix="/hooks", tags=["provider callbacks"])

Limit = Annotated[int, Query(ge=1, le=200)]
TRANSPARENT_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"}
ALIYUN_OK = {"code": 0, "msg": "接收成功"}


# Templates, layouts, previews


@admin.post("/templates", status_code=201)
def create_template(data: TemplateCreate, session: SessionDep, _key: MarketerKey) -> TemplateRead:
    return TemplateRead.model_validate(service.create_template(session, data))


@admin.get("/templates")
def list_templates(
    session: SessionDep, _key: MarketerKey, channel: TemplateChannel | None = None
) -> list[TemplateRead]:
    return [TemplateRead.model_validate(t) for t in service.list_templates(session, channel)]


@admin.get("/templates/{template_id}")
def get_template(template_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> TemplateRead:
    return TemplateRead.model_validate(service.get_template(session, template_id))


@admin.patch("/templates/{template_id}")
def update_template(
    template_id: uuid.UUID, data: TemplateUpdate, session: SessionDep, _key: MarketerKey
) -> TemplateRead:
    return TemplateRead.model_validate(service.update_template(session, template_id, data))


@admin.delete("/templates/{template_id}", status_code=204)
def archive_template(template_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> Response:
    service.archive_template(session, template_id)
    return Response(status_code=204)


@admin.post("/templates/{template_id}/preview")
def preview_template(
    template_id: uuid.UUID, data: PreviewRequest, session: SessionDep, _key: MarketerKey
) -> Preview:
    """Renders the template for a contact (`contact_id`) or made-up `sample` data."""
    return service.preview(session, template_id, data)


@admin.post("/templates/{template_id}/test-send")
def test_send(
    template_id: uuid.UUID, data: TestSendRequest, session: SessionDep, _key: MarketerKey
) -> TestSendResult:
    """Sends the rendered template to `to` (an email address or phone), untracked."""
    return service.test_send(session, template_id, data)


@admin.post("/email-layouts", status_code=201)
def create_layout(data: LayoutCreate, session: SessionDep, _key: MarketerKey) -> LayoutRead:
    return LayoutRead.model_validate(service.create_layout(session, data))


@admin.get("/email-layouts")
def list_layouts(session: SessionDep, _key: MarketerKey) -> list[LayoutRead]:
    return [LayoutRead.model_validate(layout) for layout in service.list_layouts(session)]


# Deliveries


@admin.post("/deliveries", status_code=201)
def send(data: SendRequest, session: SessionDep, _key: MarketerKey) -> DeliveryRead:
    """Records a delivery (idempotent by `idempotency_key`) and sends it after commit."""
    delivery = service.send(session, **data.model_dump())
    return DeliveryRead.model_validate(delivery)


@admin.get("/deliveries")
def list_deliveries(
    session: SessionDep,
    _key: MarketerKey,
    contact_id: uuid.UUID | None = None,
    journey_id: uuid.UUID | None = None,
    campaign: Annotated[str | None, Query(max_length=200)] = None,
    channel: Channel | None = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Limit = 50,
) -> DeliveryPage:
    rows, next_cursor = service.list_deliveries(
        session,
        contact_id=contact_id,
        journey_id=journey_id,
        campaign=campaign,
        channel=channel,
        status=status,
        cursor=cursor,
        limit=limit,
    )
    return DeliveryPage(
        items=[DeliveryRead.model_validate(d) for d in rows], next_cursor=next_cursor
    )


@admin.get("/deliveries/{delivery_id}")
def get_delivery(delivery_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> DeliveryRead:
    return DeliveryRead.model_validate(service.get_delivery(session, delivery_id))


# Suppressions and channel health


@admin.get("/suppressions")
def list_suppressions(
    session: SessionDep,
    _key: MarketerKey,
    channel: Annotated[str | None, Query(pattern="^(email|sms)$")] = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
    cursor: Annotated[int | None, Query(ge=0)] = None,
    limit: Limit = 100,
) -> SuppressionPage:
    rows, next_id = service.list_suppressions(session, channel, address, cursor, limit)
    return SuppressionPage(
        items=[SuppressionRead.model_validate(s) for s in rows],
        next_cursor=str(next_id) if next_id is not None else None,
    )


@admin.post("/suppressions", status_code=201)
def add_suppression(
    data: SuppressionCreate, session: SessionDep, _key: MarketerKey
) -> SuppressionRead:
    return SuppressionRead.model_validate(service.add_suppression(session, data))


@admin.delete("/suppressions/{suppression_id}", status_code=204)
def remove_suppression(suppression_id: int, session: SessionDep, _key: MarketerKey) -> Response:
    service.remove_suppression(session, suppression_id)
    return Response(status_code=204)


@admin.get("/channels/health")
def channel_health(
    session: SessionDep, _key: MarketerKey, days: Annotated[int, Query(ge=1, le=90)] = 7
) -> HealthReport:
    """Per channel: deliveries by status and failures by code, pauses and recent alerts."""
    return service.health(session, days)


@admin.post("/channels/{channel}/resume", status_code=204)
def resume_channel(channel: Channel, session: SessionDep, _key: MarketerKey) -> Response:
    service.resume_channel(session, channel)
    return Response(status_code=204)


# Webhook endpoints, dead letters, robots


@admin.post("/webhook-endpoints", status_code=201)
def create_endpoint(
    data: WebhookEndpointCreate, session: SessionDep, _key: MarketerKey
) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret.model_validate(service.create_endpoint(session, data))


@admin.get("/webhook-endpoints")
def list_endpoints(session: SessionDep, _key: MarketerKey) -> list[WebhookEndpointRead]:
    return [WebhookEndpointRead.model_validate(e) for e in service.list_endpoints(session)]


@admin.delete("/webhook-endpoints/{endpoint_id}", status_code=204)
def deactivate_endpoint(endpoint_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> Response:
    service.deactivate_endpoint(session, endpoint_id)
    return Response(status_code=204)


@admin.get("/dead-letters")
def list_dead_letters(
    session: SessionDep, _key: MarketerKey, pending: bool = True
) -> list[DeadLetterRead]:
    return [DeadLetterRead.model_validate(d) for d in service.list_dead_letters(session, pending)]


@admin.post("/dead-letters/{dead_letter_id}/replay")
def replay_dead_letter(dead_letter_id: int, session: SessionDep, _key: MarketerKey) -> DeliveryRead:
    return DeliveryRead.model_validate(service.replay_dead_letter(session, dead_letter_id))


def robot_read(robot: Robot) -> RobotRead:
    return RobotRead(
        id=robot.id,
        name=robot.name,
        kind=robot.kind,
        created_at=robot.created_at,
        signed=bool(robot.secret),
    )


@admin.post("/robots", status_code=201)
def create_robot(data: RobotCreate, session: SessionDep, _key: MarketerKey) -> RobotRead:
    return robot_read(service.create_robot(session, data))


@admin.get("/robots")
def list_robots(session: SessionDep, _key: MarketerKey) -> list[RobotRead]:
    return [robot_read(robot) for robot in service.list_robots(session)]


@admin.delete("/robots/{robot_id}", status_code=204)
def delete_robot(robot_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> Response:
    service.delete_robot(session, robot_id)
    return Response(status_code=204)


# Public: tracking pixel, click redirects, unsubscribe and preferences


@public.get("/t/o/{token}.gif")
def open_pixel(token: str, request: Request, session: SessionDep) -> Response:
    delivery_id = tokens.read_delivery_token("open", token)
    if delivery_id is not None:
        tracking.record_open(session, delivery_id, request.headers.get("user-agent"))
    return Response(TRANSPARENT_GIF, media_type="image/gif", headers=NO_STORE)


@public.api_route("/t/c/{token}", methods=["GET", "HEAD"])
def click(token: str, request: Request, session: SessionDep) -> Response:
    return _follow(tokens.read_click_token(token), request, session)


@public.api_route("/s/{token}", methods=["GET", "HEAD"])
def sms_click(token: str, request: Request, session: SessionDep) -> Response:
    """The short links in SMS messages."""
    return _follow(tokens.read_short_click_token(token), request, session)


def _follow(
    parsed: tuple[uuid.UUID, int] | None, request: Request, session: SessionDep
) -> Response:
    """Records the click and redirects to the stored URL (never one taken from the request)."""
    url = None
    if parsed is not None:
        url = tracking.record_click(
            session,
            parsed[0],
            parsed[1],
            request.headers.get("user-agent"),
            request.method == "HEAD",
        )
    if url is None:
        return HTMLResponse(unsubscribe.invalid_link_page(), status_code=404, headers=NO_STORE)
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


def _delivery_from(token: str, session: SessionDep) -> Delivery | None:
    delivery_id = tokens.read_delivery_token("unsubscribe", token)
    return session.get(Delivery, delivery_id) if delivery_id is not None else None


def _channel_of(delivery: Delivery) -> str:
    return "SMS" if delivery.channel == "sms" else "email"


@public.get("/u/{token}")
def unsubscribe_confirm(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    """GET only asks: link scanners fetch URLs, and must not unsubscribe anyone."""
    delivery = _delivery_from(token, session)
    if delivery is None:
        return HTMLResponse(unsubscribe.invalid_link_page(), status_code=404, headers=NO_STORE)
    here = str(request.url.path)
    return HTMLResponse(
        unsubscribe.confirm_page(here, _channel_of(delivery), f"{here}/preferences"),
        headers=NO_STORE,
    )


@public.post("/u/{token}")
async def unsubscribe_now(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    """RFC 8058 one-click POST (`List-Unsubscribe=One-Click`) and the confirmation form: no
    cookie or login, effective at once."""
    form = await request.form()
    delivery = _delivery_from(token, session)
    if delivery is None:
        return HTMLResponse(unsubscribe.invalid_link_page(), status_code=404, headers=NO_STORE)
    how = "one_click" if form.get("List-Unsubscribe") == "One-Click" else "page"
    unsubscribe.unsubscribe_from_delivery(session, delivery, how)
    here = str(request.url.path)
    return HTMLResponse(
        unsubscribe.done_page(_channel_of(delivery), f"{here}/preferences"), headers=NO_STORE
    )


@public.get("/u/{token}/preferences")
def preferences(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    delivery = _delivery_from(token, session)
    contact = delivery_contact(session, delivery) if delivery else None
    if contact is None:
        return HTMLResponse(unsubscribe.invalid_link_page(), status_code=404, headers=NO_STORE)
    current = unsubscribe.Preferences(
        email=unsubscribe.subscribed(contact, "email"), sms=unsubscribe.subscribed(contact, "sms")
    )
    return HTMLResponse(
        unsubscribe.preferences_page(str(request.url.path), current, saved=False), headers=NO_STORE
    )


@public.post("/u/{token}/preferences")
async def save_preferences(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    form = await request.form()
    delivery = _delivery_from(token, session)
    if delivery is None:
        return HTMLResponse(unsubscribe.invalid_link_page(), status_code=404, headers=NO_STORE)
    wanted = unsubscribe.Preferences(email=form.get("email") == "yes", sms=form.get("sms") == "yes")
    unsubscribe.update_preferences(session, delivery, wanted)
    return HTMLResponse(
        unsubscribe.preferences_page(str(request.url.path), wanted, saved=True), headers=NO_STORE
    )


# Provider callbacks, authenticated by the shared feedback token


def require_feedback_token(request: Request) -> None:
    expected = get_channel_settings().feedback_token
    given = request.headers.get("x-nurture-token") or request.query_params.get("token") or ""
    if not expected:
        raise ApiError(503, "not_configured", "NURTURE_FEEDBACK_TOKEN is not set")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "the feedback token is missing or wrong")


async def _json_list(request: Request, model: Any) -> list[Any]:
    """One report object or a list of them; field errors name the item (`0.email`) in a list."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from exc
    adapter = TypeAdapter(list[model]) if isinstance(body, list) else TypeAdapter(model)
    try:
        parsed = adapter.validate_python(body)
    except ValidationError as exc:
        fields = field_errors(list(exc.errors()))
        raise ApiError(422, "invalid", "invalid report: " + ", ".join(fields), fields) from exc
    return parsed if isinstance(body, list) else [parsed]


@hooks.post("/email/feedback")
async def email_feedback(request: Request, session: SessionDep) -> dict[str, bool]:
    """Bounces and complaints as JSON (one object or a list): `type` bounce|complaint,
    `email`, `bounce_type` hard|soft, optional `delivery_id`/`message_id`, `code`, `reason`."""
    require_feedback_token(request)
    for report in await _json_list(request, EmailFeedback):
        feedback.email_feedback(session, report)
    return {"ok": True}


@hooks.post("/email/inbound")
async def email_inbound(request: Request, session: SessionDep) -> dict[str, bool]:
    """The inbound-mail webhook for the List-Unsubscribe mailto address (`from`, `to`,
    `subject`, `text`): a mail carrying a valid unsubscribe token unsubscribes its contact.
    Other mail is accepted and ignored (`unsubscribed` false), so the provider does not retry."""
    require_feedback_token(request)
    mails = await _json_list(request, InboundEmail)
    done = [unsubscribe.unsubscribe_by_mail(session, m.subject, m.text) for m in mails]
    return {"ok": True, "unsubscribed": any(contact is not None for contact in done)}


@hooks.post("/aliyun/sms-report")
async def aliyun_sms_report(request: Request, session: SessionDep) -> dict[str, Any]:
    """Aliyun SmsReport push: a JSON array of delivery receipts."""
    require_feedback_token(request)
    for report in await _json_list(request, SmsReport):
        feedback.sms_report(session, report)
    return ALIYUN_OK


@hooks.post("/aliyun/sms-up")
async def aliyun_sms_up(request: Request, session: SessionDep) -> dict[str, Any]:
    """Aliyun SmsUp push: replies; R, TD, 退订 and the like unsubscribe the number."""
    require_feedback_token(request)
    for reply in await _json_list(request, SmsReply):
        feedback.sms_reply(session, reply)
    return ALIYUN_OK


router = APIRouter()
router.include_router(admin)
router.include_router(public)
router.include_router(hooks)
