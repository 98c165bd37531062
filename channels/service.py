"""The channels service: `send` (the one interface journeys and handoff call), templates and
previews, deliveries, suppressions, channel health, webhook endpoints and robots."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.identity import normalize_email, normalize_phone
from capture.models import Contact
from channels import emails, templates
from channels.models import (
    CHANNELS,
    ChannelAlert,
    ChannelState,
    DeadLetter,
    Delivery,
    EmailLayout,
    Robot,
    Suppression,
    Template,
    WebhookEndpoint,
)
from channels.outcome import Result
from channels.providers import aliyun_sms, smtp
from channels.records import contact_view
from channels.schemas import (
    AlertRead,
    ChannelHealth,
    HealthReport,
    LayoutCreate,
    Preview,
    PreviewRequest,
    RobotCreate,
    SuppressionCreate,
    TemplateCreate,
    TemplateUpdate,
    TestSendRequest,
    TestSendResult,
    WebhookEndpointCreate,
)
from channels.settings import get_channel_settings
from channels.tasks import send_after_commit
from core.clock import clock
from core.db import dialect_insert
from core.ids import new_secret

OPT_OUT_WORDING = re.compile(r"退订|拒收|\bSTOP\b", re.IGNORECASE)
MAX_KEY_LENGTH = 300
MAX_MERGE_HOPS = 10
ADDRESS_CHANNELS = ("email", "sms")
SAMPLE_CONTACT = {"id": str(uuid.UUID(int=0)), "email": "sample@example.com", "traits": {}}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {message}", {field: message})


def not_found(what: str, item_id: object) -> ApiError:
    return ApiError(404, "not_found", f"{what} {item_id} does not exist")


# Sending


def send(
    session: Session,
    *,
    contact_id: uuid.UUID,
    channel: str,
    template_id: uuid.UUID | None = None,
    idempotency_key: str,
    context: dict[str, Any] | None = None,
    journey_id: uuid.UUID | None = None,
    enrollment_id: uuid.UUID | None = None,
    campaign: str | None = None,
    transactional: bool = False,
    target: dict[str, Any] | None = None,
) -> Delivery:
    """Records a delivery under `idempotency_key` and sends it after commit. The same key
    returns the delivery already recorded and sends nothing. Policies apply at send time."""
    existing = _existing(session, idempotency_key)
    if existing is not None:
        return existing
    target = dict(target or {})
    contact_id = current_contact_id(session, contact_id)
    to_address = _check_send(session, channel, template_id, target)
    return _record_delivery(
        session,
        idempotency_key=idempotency_key,
        contact_id=contact_id,
        channel=channel,
        template_id=template_id,
        to_address=to_address,
        context=context,
        journey_id=journey_id,
        enrollment_id=enrollment_id,
        campaign=campaign,
        transactional=transactional,
        target=target,
    )


def send_to_address(
    session: Session,
    *,
    channel: str,
    to: str,
    template_id: uuid.UUID,
    idempotency_key: str,
    context: dict[str, Any] | None = None,
    journey_id: uuid.UUID | None = None,
    campaign: str | None = None,
) -> Delivery:
    """Like `send`, to an explicit email address or phone number that is not a contact (e.g. a
    sales rep): same idempotency, rendering, tracking and delivery record. Such a message is
    operational (transactional: no consent or caps, no unsubscribe link) but still never goes
    to a suppressed address; in templates `contact` holds only the address, so put what the
    message is about into `context`."""
    existing = _existing(session, idempotency_key)
    if existing is not None:
        return existing
    if channel not in ADDRESS_CHANNELS:
        raise invalid("channel", f"must be one of {', '.join(ADDRESS_CHANNELS)}")
    address = normalize_email(to) if channel == "email" else normalize_phone(to)
    if address is None:
        kind = "email address" if channel == "email" else "phone number"
        raise invalid("to", f"is not a valid {kind}")
    _check_send(session, channel, template_id, {})
    return _record_delivery(
        session,
        idempotency_key=idempotency_key,
        contact_id=None,
        channel=channel,
        template_id=template_id,
        to_address=address,
        context=context,
        journey_id=journey_id,
        enrollment_id=None,
        campaign=campaign,
        transactional=True,
        target={"to": address},
    )


def _existing(session: Session, idempotency_key: str) -> Delivery | None:
    existing = session.scalar(select(Delivery).where(Delivery.idempotency_key == idempotency_key))
    if existing is None and not 0 < len(idempotency_key) <= MAX_KEY_LENGTH:
        raise invalid("idempotency_key", f"must be 1 to {MAX_KEY_LENGTH} characters")
    return existing


def _record_delivery(
    session: Session,
    *,
    idempotency_key: str,
    contact_id: uuid.UUID | None,
    channel: str,
    template_id: uuid.UUID | None,
    to_address: str | None,
    context: dict[str, Any] | None,
    journey_id: uuid.UUID | None,
    enrollment_id: uuid.UUID | None,
    campaign: str | None,
    transactional: bool,
    target: dict[str, Any],
) -> Delivery:
    try:
        context = orjson.loads(orjson.dumps(context or {}))
    except TypeError as exc:
        raise invalid("context", f"must be JSON: {exc}") from exc
    now = clock.now()
    insert = dialect_insert(session, Delivery)
    delivery_id = session.scalar(
        insert.values(
            id=uuid.uuid4(),
            idempotency_key=idempotency_key,
            contact_id=contact_id,
            channel=channel,
            template_id=template_id,
            status="queued",
            transactional=transactional,
            to_address=to_address,
            attempts=0,
            journey_id=journey_id,
            enrollment_id=enrollment_id,
            campaign=campaign,
            context=context,
            target=target,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Delivery.id)
    )
    if delivery_id is not None:
        send_after_commit(session, delivery_id)
    delivery = session.scalar(select(Delivery).where(Delivery.idempotency_key == idempotency_key))
    assert delivery is not None
    return delivery


def current_contact_id(session: Session, contact_id: uuid.UUID) -> uuid.UUID:
    """The contact a message goes to: a merged contact's messages go to the one it joined."""
    for _ in range(MAX_MERGE_HOPS):
        contact = session.get(Contact, contact_id)
        if contact is None:
            raise invalid("contact_id", f"contact {contact_id} does not exist")
        if contact.merged_into_id is None:
            return contact_id
        contact_id = contact.merged_into_id
    raise invalid("contact_id", "the contact's merge chain is too long")


def _check_send(
    session: Session,
    channel: str,
    template_id: uuid.UUID | None,
    target: dict[str, Any],
) -> str | None:
    if channel not in CHANNELS:
        raise invalid("channel", f"must be one of {', '.join(CHANNELS)}")
    if template_id is not None:
        template = session.get(Template, template_id)
        if template is None or template.archived_at is not None:
            raise invalid("template_id", f"template {template_id} does not exist or is archived")
        if template.channel != channel:
            raise invalid("template_id", f"is a {template.channel} template, not {channel}")
    elif channel in ("email", "sms"):
        raise invalid("template_id", f"is required for {channel}")
    if channel == "webhook":
        endpoint = session.get(WebhookEndpoint, _target_id(target, "endpoint_id"))
        if endpoint is None:
            raise invalid("target.endpoint_id", "no such webhook endpoint")
        return str(endpoint.id)
    if channel in ("wecom", "dingtalk"):
        robot = session.get(Robot, _target_id(target, "robot_id"))
        if robot is None or robot.kind != channel:
            raise invalid("target.robot_id", f"no such {channel} robot")
        return str(robot.id)
    return None


def _target_id(target: dict[str, Any], key: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(target[key]))
    except (KeyError, ValueError) as exc:
        raise invalid(f"target.{key}", "is required and must be a UUID") from exc


# Templates


def _validate_template(template: Template) -> None:
    for field in ("subject", "html", "text", "body"):
        source = getattr(template, field)
        if source:
            templates.check_source(source, field)
    for name, expr in (template.params or {}).items():
        templates.check_source(str(expr), f"params.{name}")
    channel = template.channel
    if channel == "email" and not (template.subject and template.html):
        raise templates.TemplateProblem("html", "an email template needs a subject and html")
    if channel == "sms":
        if not template.provider_template_code:
            raise templates.TemplateProblem(
                "provider_template_code", "the Aliyun template code (SMS_...) is required"
            )
        if not template.body:
            raise templates.TemplateProblem("body", "the approved SMS wording is required")
        if template.purpose == "marketing" and not OPT_OUT_WORDING.search(template.body):
            raise templates.TemplateProblem(
                "body", "a marketing SMS must carry opt-out wording (e.g. 拒收请回复R)"
            )
    if channel in ("wecom", "dingtalk") and not template.body:
        raise templates.TemplateProblem("body", "a robot message template needs a body")
    render_template(template, None, SAMPLE_CONTACT, {})


def _save_template(session: Session, template: Template) -> Template:
    """Validates, then stores; nothing is flushed before the template is known to be good."""
    with session.no_autoflush:
        if template.layout_id is not None and session.get(EmailLayout, template.layout_id) is None:
            raise invalid("layout_id", f"layout {template.layout_id} does not exist")
        try:
            _validate_template(template)
        except templates.TemplateProblem as exc:
            raise invalid(exc.field, exc.message) from exc
    session.add(template)
    session.flush()
    return template


def create_template(session: Session, data: TemplateCreate) -> Template:
    return _save_template(session, Template(**data.model_dump()))


def get_template(session: Session, template_id: uuid.UUID) -> Template:
    template = session.get(Template, template_id)
    if template is None:
        raise not_found("template", template_id)
    return template


def update_template(session: Session, template_id: uuid.UUID, data: TemplateUpdate) -> Template:
    template = get_template(session, template_id)
    for field, value in data.model_dump(exclude_unset=True).items():
        setattr(template, field, value)
    return _save_template(session, template)


def archive_template(session: Session, template_id: uuid.UUID) -> None:
    template = get_template(session, template_id)
    template.archived_at = template.archived_at or clock.now()
    session.flush()


def list_templates(session: Session, channel: str | None) -> list[Template]:
    stmt = select(Template).where(Template.archived_at.is_(None)).order_by(Template.created_at)
    if channel:
        stmt = stmt.where(Template.channel == channel)
    return list(session.scalars(stmt))


def create_layout(session: Session, data: LayoutCreate) -> EmailLayout:
    try:
        for field in ("html", "text"):
            source = getattr(data, field)
            if source:
                templates.check_source(source, field)
    except templates.TemplateProblem as exc:
        raise invalid(exc.field, exc.message) from exc
    layout = EmailLayout(**data.model_dump())
    session.add(layout)
    session.flush()
    return layout


def list_layouts(session: Session) -> list[EmailLayout]:
    return list(session.scalars(select(EmailLayout).order_by(EmailLayout.created_at)))


# Previews and test sends


def render_template(
    template: Template,
    layout: EmailLayout | None,
    contact: dict[str, Any],
    context: dict[str, Any],
) -> Preview:
    variables = templates.variables_for(contact, context)
    if template.channel == "email":
        rendered = templates.render_email(
            template.subject or "",
            template.html or "",
            template.text,
            layout.html if layout else None,
            layout.text if layout else None,
            {**variables, "unsubscribe_url": "#unsubscribe", "preferences_url": "#preferences"},
        )
        return Preview(
            channel="email", subject=rendered.subject, html=rendered.html, text=rendered.text
        )
    params = {
        name: templates.render(str(expr), variables, html_escape=False, field=f"params.{name}")
        for name, expr in (template.params or {}).items()
    }
    body = (
        templates.render(template.body, variables, html_escape=False, field="body")
        if template.body
        else None
    )
    if template.channel == "webhook" and body is not None:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise templates.TemplateProblem("body", f"does not render to JSON: {exc}") from exc
    return Preview(channel=template.channel, params=params or None, body=body)


def _preview_inputs(
    session: Session, request: PreviewRequest
) -> tuple[dict[str, Any], dict[str, Any]]:
    if request.contact_id is not None:
        contact = session.get(Contact, request.contact_id)
        if contact is None:
            raise invalid("contact_id", f"contact {request.contact_id} does not exist")
        return contact_view(contact), request.context
    sample = request.sample
    if sample is None:
        return dict(SAMPLE_CONTACT), request.context
    return sample.contact, {**sample.context, **request.context}


def preview(session: Session, template_id: uuid.UUID, request: PreviewRequest) -> Preview:
    template = get_template(session, template_id)
    layout = session.get(EmailLayout, template.layout_id) if template.layout_id else None
    contact, context = _preview_inputs(session, request)
    try:
        return render_template(template, layout, contact, context)
    except templates.TemplateProblem as exc:
        raise invalid(exc.field, exc.message) from exc


def test_send(session: Session, template_id: uuid.UUID, request: TestSendRequest) -> TestSendResult:
    """Sends the rendered template to any address or phone, untracked, without a delivery."""
    template = get_template(session, template_id)
    contact, context = _preview_inputs(session, request)
    settings = get_channel_settings()
    variables = templates.variables_for(contact, context)
    try:
        if template.channel == "email":
            address = normalize_email(request.to)
            if address is None:
                raise invalid("to", "is not a valid email address")
            layout = session.get(EmailLayout, template.layout_id) if template.layout_id else None
            composed = emails.compose(
                delivery_id=None,
                template=template,
                layout=layout,
                variables=variables,
                recipient=address,
                campaign=None,
                marketing=False,
                settings=settings,
                subject_prefix="[Test] ",
            )
            outcome = smtp.get_connection(settings).send(
                composed.data, composed.message_id, composed.sender, address
            )
        elif template.channel == "sms":
            phone = normalize_phone(request.to)
            if phone is None:
                raise invalid("to", "is not a valid phone number")
            if not (settings.aliyun_access_key_id and settings.aliyun_sms_sign_name):
                raise ApiError(409, "not_configured", "Aliyun SMS is not configured")
            params = render_template(template, None, contact, context).params or {}
            outcome = aliyun_sms.get_client(settings).send(
                phone,
                settings.aliyun_sms_sign_name,
                template.provider_template_code or "",
                params,
                f"test-{uuid.uuid4().hex[:16]}",
            )
            address = phone
        else:
            raise invalid("template_id", "test sends are for email and SMS templates")
    except templates.TemplateProblem as exc:
        raise invalid(exc.field, exc.message) from exc
    sent = outcome.result in (Result.sent, Result.delivered)
    return TestSendResult(
        sent=sent,
        to=address,
        provider_message_id=outcome.message_id,
        error_code=None if sent else outcome.code,
        error_reason=None if sent else outcome.reason,
    )


# Deliveries


def encode_cursor(created_at: datetime, item_id: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(item_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, item_id = orjson.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
        return datetime.fromisoformat(created_at), uuid.UUID(item_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise invalid("cursor", "is not a cursor this endpoint returned") from exc


def list_deliveries(
    session: Session,
    *,
    contact_id: uuid.UUID | None = None,
    journey_id: uuid.UUID | None = None,
    campaign: str | None = None,
    channel: str | None = None,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Delivery], str | None]:
    conditions: list[ColumnElement[bool]] = []
    if contact_id is not None:
        conditions.append(Delivery.contact_id == contact_id)
    if journey_id is not None:
        conditions.append(Delivery.journey_id == journey_id)
    if campaign is not None:
        conditions.append(Delivery.campaign == campaign)
    if channel is not None:
        conditions.append(Delivery.channel == channel)
    if status is not None:
        conditions.append(Delivery.status == status)
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        conditions.append(
            (Delivery.created_at < created_at)
            | ((Delivery.created_at == created_at) & (Delivery.id < last_id))
        )
    rows = list(
        session.scalars(
            select(Delivery)
            .where(*conditions)
            .order_by(Delivery.created_at.desc(), Delivery.id.desc())
            .limit(limit + 1)
        )
    )
    next_cursor = (
        encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    )
    return rows[:limit], next_cursor


def get_delivery(session: Session, delivery_id: uuid.UUID) -> Delivery:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise not_found("delivery", delivery_id)
    return delivery


# Suppressions


def normalized_address(channel: str, address: str) -> str:
    normalized = normalize_email(address) if channel == "email" else normalize_phone(address)
    if normalized is None:
        kind = "email address" if channel == "email" else "phone number"
        raise invalid("address", f"is not a valid {kind}")
    return normalized


def add_suppression(session: Session, data: SuppressionCreate) -> Suppression:
    address = normalized_address(data.channel, data.address)
    existing = session.scalar(
        select(Suppression).where(
            Suppression.channel == data.channel, Suppression.address == address
        )
    )
    if existing is not None:
        return existing
    suppression = Suppression(
        channel=data.channel, address=address, reason=data.reason, detail=data.detail
    )
    session.add(suppression)
    session.flush()
    return suppression


def list_suppressions(
    session: Session, channel: str | None, address: str | None, after_id: int | None, limit: int
) -> tuple[list[Suppression], int | None]:
    stmt = select(Suppression).order_by(Suppression.id).limit(limit + 1)
    if channel:
        stmt = stmt.where(Suppression.channel == channel)
    if address and channel:
        stmt = stmt.where(Suppression.address == normalized_address(channel, address))
    if after_id is not None:
        stmt = stmt.where(Suppression.id > after_id)
    rows = list(session.scalars(stmt))
    return rows[:limit], rows[limit - 1].id if len(rows) > limit else None


def remove_suppression(session: Session, suppression_id: int) -> None:
    removed = session.execute(delete(Suppression).where(Suppression.id == suppression_id))
    if not getattr(removed, "rowcount", 0):
        raise not_found("suppression", suppression_id)


# Health


def health(session: Session, days: int) -> HealthReport:
    since = clock.now() - timedelta(days=days)
    by_status: dict[str, dict[str, int]] = {channel: {} for channel in CHANNELS}
    for channel, status, count in session.execute(
        select(Delivery.channel, Delivery.status, func.count())
        .where(Delivery.created_at >= since)
        .group_by(Delivery.channel, Delivery.status)
    ):
        by_status.setdefault(channel, {})[status] = count
    failures: dict[str, dict[str, int]] = {channel: {} for channel in CHANNELS}
    for channel, code, count in session.execute(
        select(Delivery.channel, Delivery.error_code, func.count())
        .where(
            Delivery.created_at >= since,
            Delivery.status.in_(("failed", "bounced", "deferred", "suppressed")),
        )
        .group_by(Delivery.channel, Delivery.error_code)
    ):
        failures.setdefault(channel, {})[code or "unknown"] = count
    states = {state.channel: state for state in session.scalars(select(ChannelState))}
    alerts = list(
        session.scalars(
            select(ChannelAlert)
            .where(ChannelAlert.created_at >= since)
            .order_by(ChannelAlert.id.desc())
            .limit(50)
        )
    )
    report = []
    for channel in CHANNELS:
        state = states.get(channel)
        paused = state is not None and state.paused_at is not None
        report.append(
            ChannelHealth(
                channel=channel,
                paused=paused,
                pause_code=state.pause_code if paused and state else None,
                pause_reason=state.pause_reason if paused and state else None,
                by_status=by_status.get(channel, {}),
                failures_by_code=failures.get(channel, {}),
            )
        )
    return HealthReport(
        since=since,
        channels=report,
        alerts=[AlertRead.model_validate(alert) for alert in alerts],
    )


def resume_channel(session: Session, channel: str) -> None:
    """Lifts a pause; deliveries held by it become due at once."""
    if channel not in CHANNELS:
        raise invalid("channel", f"must be one of {', '.join(CHANNELS)}")
    session.execute(
        update(ChannelState)
        .where(ChannelState.channel == channel)
        .values(paused_at=None, pause_code=None, pause_reason=None)
    )
    session.execute(
        update(Delivery)
        .where(
            Delivery.channel == channel,
            Delivery.status == "deferred",
            Delivery.next_attempt_at > clock.now(),
        )
        .where(Delivery.error_code.in_(("channel_paused", *_account_codes())))
        .values(next_attempt_at=clock.now())
    )


def _account_codes() -> tuple[str, ...]:
    return (*aliyun_sms.ACCOUNT_CODES, "not_configured", "smtp_auth")


# Webhook endpoints and robots


def create_endpoint(session: Session, data: WebhookEndpointCreate) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        name=data.name, url=data.url, events=list(data.events), secret=new_secret("whsec")
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def list_endpoints(session: Session) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at)))


def deactivate_endpoint(session: Session, endpoint_id: uuid.UUID) -> None:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise not_found("webhook endpoint", endpoint_id)
    endpoint.active = False
    session.flush()


def list_dead_letters(session: Session, pending_only: bool) -> list[DeadLetter]:
    stmt = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(200)
    if pending_only:
        stmt = stmt.where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(stmt))


def replay_dead_letter(session: Session, dead_letter_id: int) -> Delivery:
    """Sends a dead-lettered webhook again: the same delivery, attempts counted afresh."""
    dead = session.get(DeadLetter, dead_letter_id, with_for_update=True)
    if dead is None:
        raise not_found("dead letter", dead_letter_id)
    if dead.replayed_at is not None:
        raise ApiError(
            409, "already_replayed", f"dead letter {dead_letter_id} was already replayed"
        )
    delivery = session.get(Delivery, dead.delivery_id, with_for_update=True)
    assert delivery is not None
    dead.replayed_at = clock.now()
    delivery.status, delivery.attempts, delivery.next_attempt_at = "queued", 0, None
    delivery.error_code = delivery.error_reason = delivery.failed_at = None
    session.flush()
    send_after_commit(session, delivery.id)
    return delivery


def create_robot(session: Session, data: RobotCreate) -> Robot:
    if data.kind == "dingtalk" and not data.secret:
        raise invalid("secret", "a DingTalk robot needs its signing secret (SEC...)")
    robot = Robot(name=data.name, kind=data.kind, webhook_url=data.webhook_url, secret=data.secret)
    session.add(robot)
    session.flush()
    return robot


def list_robots(session: Session) -> list[Robot]:
    return list(session.scalars(select(Robot).order_by(Robot.created_at)))


def delete_robot(session: Session, robot_id: uuid.UUID) -> None:
    robot = session.get(Robot, robot_id)
    if robot is None:
        raise not_found("robot", robot_id)
    session.delete(robot)
    session.flush()
