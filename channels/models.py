"""Channels' tables: templates, deliveries and what came back from them, suppressions,
webhook endpoints, team-messaging robots and the state of each channel."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import CreateTable

from core.models import Base, BigIntId, Timestamps, UUIDPrimaryKey, utcnow

CHANNELS = ("email", "sms", "webhook", "wecom", "dingtalk")
STATUSES = (
    "queued",
    "sending",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "failed",
    "suppressed",
    "deferred",
)


class EmailLayout(UUIDPrimaryKey, Timestamps, Base):
    """A shared HTML/text frame that wraps email bodies at `{{ content }}`."""

    __tablename__ = "email_layouts"

    name: Mapped[str] = mapped_column(String(200))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)


class Template(UUIDPrimaryKey, Timestamps, Base):
    """A marketer-authored message for one channel, rendered in the Jinja2 sandbox.

    Email uses subject/html/text (+ layout); SMS uses the Aliyun template code with `params`
    (TemplateParam name → expression) and `body` as the approved wording; robots use `body`
    as markdown; webhooks use `body` as an optional JSON template.
    """

    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(16), default="marketing")
    subject: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    layout_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("email_layouts.id"))
    provider_template_code: Mapped[str | None] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    archived_at: Mapped[datetime | None]


class Delivery(UUIDPrimaryKey, Timestamps, Base):
    """One message to one contact on one channel, held once by its idempotency key.

    A message to an explicit address (a sales rep, not a contact) has no contact: its address
    is in `target["to"]` and `to_address`."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_next_attempt", "status", "next_attempt_at"),
        Index("ix_deliveries_contact_channel_sent", "contact_id", "channel", "sent_at"),
        Index("ix_deliveries_channel_address_sent", "channel", "to_address", "sent_at"),
    )

    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    contact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(16))
    template_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("templates.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16), default="queued")
    transactional: Mapped[bool] = mapped_column(Boolean, default=False)
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(200), index=True)
    to_address: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    journey_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    enrollment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    campaign: Mapped[str | None] = mapped_column(String(200), index=True)
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    target: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # When the message was claimed (see SendClaim), written when its outcome is recorded.
    sending_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    opened_at: Mapped[datetime | None]
    clicked_at: Mapped[datetime | None]
    bounced_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]


class SendClaim(Base):
    """The claim-before-send ledger of one run of sends: a row per message the run reserved,
    `claimed_at` set (and committed) just before the provider call and the provider's answer
    noted just after, until the run records the batch onto its deliveries and deletes the rows.

    UNLOGGED on PostgreSQL, so a claim commits without waiting for the disk: a worker killed
    mid-batch leaves its claims readable, and a database crash empties the table, which
    recovery reads as "may have gone out" (never resent)."""

    __tablename__ = "send_claims"

    delivery_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    claimed_at: Mapped[datetime | None]
    result: Mapped[str | None] = mapped_column(String(32))
    code: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(200))
    until: Mapped[datetime | None]


UNLOGGED_TABLES = frozenset({SendClaim.__tablename__})


@compiles(CreateTable, "postgresql")
def _create_unlogged(create: CreateTable, compiler: Any, **options: Any) -> str:
    # By name, so that the Alembic migration's own Table object is created UNLOGGED too.
    sql: str = compiler.visit_create_table(create, **options)
    if create.element.name in UNLOGGED_TABLES:
        sql = sql.replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1)
    return sql


class TrackedLink(Base):
    """A link of one email, rewritten to a signed click URL: the token only ever maps here."""

    __tablename__ = "tracked_links"
    __table_args__ = (UniqueConstraint("delivery_id", "position"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)


class DeliveryEvent(Base):
    """Something that came back about a delivery (open, click, bounce, receipt, reply),
    recorded once per dedupe key."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    delivery_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    machine: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suppression(Base):
    """An address nothing may be sent to (hard bounce, complaint, invalid number, by hand)."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelState(Base):
    """A channel paused by an account problem (e.g. Aliyun balance), until resumed."""

    __tablename__ = "channel_states"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    paused_at: Mapped[datetime | None]
    pause_code: Mapped[str | None] = mapped_column(String(100))
    pause_reason: Mapped[str | None] = mapped_column(Text)


class ChannelAlert(Base):
    """An alert for operators: a paused channel, a dead-lettered webhook."""

    __tablename__ = "channel_alerts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WebhookEndpoint(UUIDPrimaryKey, Timestamps, Base):
    """An outgoing webhook target; `events` are the event names it subscribes to.

    The signing secret is kept readable because we must sign with it (it is never
    returned by the API after creation).
    """

    __tablename__ = "webhook_endpoints"

    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(200))
    events: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class DeadLetter(Base):
    """A webhook delivery that failed its last attempt, kept for replay."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), unique=True
    )
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None]


class Robot(UUIDPrimaryKey, Timestamps, Base):
    """A WeCom group robot or DingTalk custom robot that notifies a team.

    Its webhook URL embeds the access key and `secret` signs DingTalk requests; both stay
    readable because every post needs them, and neither is returned by the API.
    """

    __tablename__ = "robots"

    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    webhook_url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(String(200))


class RobotPost(Base):
    """One message posted to a robot (possibly several deliveries coalesced): the rate window."""

    __tablename__ = "robot_posts"
    __table_args__ = (Index("ix_robot_posts_robot_posted", "robot_id", "posted_at"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    robot_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("robots.id", ondelete="CASCADE"))
    posted_at: Mapped[datetime] = mapped_column(default=utcnow)
    deliveries: Mapped[int] = mapped_column(Integer)
