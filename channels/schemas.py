"""Request and response models of the channels admin API and of the provider callbacks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from capture.schemas import Name, PlainText

Channel = Literal["email", "sms", "webhook", "wecom", "dingtalk"]
TemplateChannel = Literal["email", "sms", "webhook", "wecom", "dingtalk"]
Purpose = Literal["marketing", "transactional"]
TemplateSource = Annotated[str, Field(max_length=200_000)]


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return value


HttpUrl = Annotated[str, Field(max_length=2000), AfterValidator(http_url)]


class LayoutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    html: TemplateSource
    text: TemplateSource | None = None


class LayoutRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    html: str
    text: str | None
    created_at: datetime


class TemplateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    channel: TemplateChannel
    purpose: Purpose = "marketing"
    subject: TemplateSource | None = None
    html: TemplateSource | None = None
    text: TemplateSource | None = None
    body: TemplateSource | None = None
    layout_id: uuid.UUID | None = None
    provider_template_code: (
        Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z0-9_]+$")] | None
    ) = None
    params: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=2000)]] = (
        Field(default_factory=dict, max_length=50)
    )


class TemplateUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    purpose: Purpose | None = None
    subject: TemplateSource | None = None
    html: TemplateSource | None = None
    text: TemplateSource | None = None
    body: TemplateSource | None = None
    layout_id: uuid.UUID | None = None
    provider_template_code: (
        Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z0-9_]+$")] | None
    ) = None
    params: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=2000)]] | None
    ) = None


class TemplateRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    channel: str
    purpose: str
    subject: str | None
    html: str | None
    text: str | None
    body: str | None
    layout_id: uuid.UUID | None
    provider_template_code: str | None
    params: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


class SampleData(BaseModel):
    """Made-up data to render with: a contact (fields and traits) and a send context."""

    model_config = ConfigDict(extra="forbid")
    contact: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: uuid.UUID | None = None
    sample: SampleData | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class Preview(BaseModel):
    channel: str
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    params: dict[str, str] | None = None
    body: str | None = None


class TestSendRequest(PreviewRequest):
    to: Annotated[str, Field(min_length=3, max_length=320)]


class TestSendResult(BaseModel):
    sent: bool
    to: str
    provider_message_id: str | None
    error_code: str | None = None
    error_reason: str | None = None


class SendRequest(BaseModel):
    """A send through the API (journeys and handoff call `channels.service.send` directly)."""

    model_config = ConfigDict(extra="forbid")
    contact_id: uuid.UUID
    channel: Channel
    template_id: uuid.UUID | None = None
    idempotency_key: Annotated[str, Field(min_length=1, max_length=300)]
    context: dict[str, Any] = Field(default_factory=dict)
    campaign: Annotated[PlainText, Field(max_length=200)] | None = None
    transactional: bool = False
    target: dict[str, Any] = Field(default_factory=dict)


class DeliveryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    idempotency_key: str
    contact_id: uuid.UUID | None
    channel: str
    template_id: uuid.UUID | None
    status: str
    transactional: bool
    provider: str | None
    provider_message_id: str | None
    to_address: str | None
    subject: str | None
    error_code: str | None
    error_reason: str | None
    attempts: int
    next_attempt_at: datetime | None
    journey_id: uuid.UUID | None
    enrollment_id: uuid.UUID | None
    campaign: str | None
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    opened_at: datetime | None
    clicked_at: datetime | None
    bounced_at: datetime | None
    failed_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryRead]
    next_cursor: str | None


class SuppressionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: Literal["email", "sms"]
    address: Annotated[str, Field(min_length=3, max_length=320)]
    reason: Literal["manual", "complaint", "hard_bounce", "invalid_number"] = "manual"
    detail: Annotated[PlainText, Field(max_length=1000)] | None = None


class SuppressionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    channel: str
    address: str
    reason: str
    detail: str | None
    created_at: datetime


class SuppressionPage(BaseModel):
    items: list[SuppressionRead]
    next_cursor: str | None


class ChannelHealth(BaseModel):
    channel: str
    paused: bool
    pause_code: str | None
    pause_reason: str | None
    by_status: dict[str, int]
    failures_by_code: dict[str, int]


class AlertRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    channel: str
    code: str
    message: str
    created_at: datetime


class HealthReport(BaseModel):
    since: datetime
    channels: list[ChannelHealth]
    alerts: list[AlertRead]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    url: HttpUrl
    events: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=100
    )


class WebhookEndpointRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    url: str
    events: list[str]
    active: bool
    created_at: datetime


class WebhookEndpointWithSecret(WebhookEndpointRead):
    secret: str = Field(description="Shown once: verify X-Nurture-Signature with it.")


class DeadLetterRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    delivery_id: uuid.UUID
    attempts: int
    last_error: str | None
    created_at: datetime
    replayed_at: datetime | None


class RobotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    kind: Literal["wecom", "dingtalk"]
    webhook_url: HttpUrl
    secret: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class RobotRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    kind: str
    created_at: datetime
    signed: bool = Field(description="Whether posts are signed with a secret (DingTalk).")


class EmailFeedback(BaseModel):
    """A bounce or complaint reported later by an email provider (generic JSON)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["bounce", "complaint"]
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
    bounce_type: Literal["hard", "soft"] = "hard"
    delivery_id: uuid.UUID | None = None
    message_id: Annotated[str, Field(max_length=300)] | None = None
    code: Annotated[str, Field(max_length=100)] | None = None
    reason: Annotated[str, Field(max_length=1000)] | None = None


class InboundEmail(BaseModel):
    """A mail received at the unsubscribe mailbox, as an inbound-mail webhook posts it."""

    model_config = ConfigDict(extra="ignore")
    sender: Annotated[str, Field(alias="from", max_length=998)] = ""
    to: Annotated[str, Field(max_length=998)] | list[Annotated[str, Field(max_length=998)]] = ""
    subject: Annotated[str, Field(max_length=998)] = ""
    text: Annotated[str, Field(max_length=100_000)] = ""


class SmsReport(BaseModel):
    """One Aliyun delivery receipt (SmsReport push)."""

    model_config = ConfigDict(extra="ignore")
    phone_number: Annotated[str, Field(min_length=3, max_length=32)]
    success: bool
    biz_id: Annotated[str, Field(max_length=100)]
    out_id: Annotated[str, Field(max_length=100)] | None = None
    err_code: Annotated[str, Field(max_length=100)] | None = None
    err_msg: Annotated[str, Field(max_length=500)] | None = None
    report_time: Annotated[str, Field(max_length=40)] | None = None
    send_time: Annotated[str, Field(max_length=40)] | None = None


class SmsReply(BaseModel):
    """One Aliyun uplink message (SmsUp push)."""

    model_config = ConfigDict(extra="ignore")
    phone_number: Annotated[str, Field(min_length=3, max_length=32)]
    content: Annotated[str, Field(max_length=1000)]
    sequence_id: int | str
    send_time: Annotated[str, Field(max_length=40)] | None = None
    sign_name: Annotated[str, Field(max_length=100)] | None = None
    dest_code: Annotated[str, Field(max_length=40)] | None = None
