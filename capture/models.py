"""Capture's tables: sources, contacts and their identities, events, visits, forms, consent."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models import Base, BigIntId, Timestamps, UUIDPrimaryKey, utcnow


class Source(UUIDPrimaryKey, Timestamps, Base):
    """A website or server that sends behaviour, identified by its public write key."""

    __tablename__ = "sources"

    name: Mapped[str] = mapped_column(String(200))
    write_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    write_key_prefix: Mapped[str] = mapped_column(String(12))
    allowed_origins: Mapped[list[Any]] = mapped_column(default=list)
    honor_do_not_track: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_at: Mapped[datetime | None]


class Company(UUIDPrimaryKey, Timestamps, Base):
    """An account from a `group` call; contacts point at it."""

    __tablename__ = "companies"

    group_id: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str | None] = mapped_column(String(300))
    traits: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Contact(UUIDPrimaryKey, Timestamps, Base):
    """A person: known or still anonymous, with the behavioural profile kept up to date."""

    __tablename__ = "contacts"

    user_id: Mapped[str | None] = mapped_column(String(200), index=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    is_known: Mapped[bool] = mapped_column(Boolean, default=False)
    traits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    company_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("companies.id"))
    timezone: Mapped[str | None] = mapped_column(String(64))

    first_seen_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None] = mapped_column(index=True)
    first_touch_at: Mapped[datetime | None]
    first_touch_channel: Mapped[str | None] = mapped_column(String(32))
    first_touch_source: Mapped[str | None] = mapped_column(String(200))
    first_touch_medium: Mapped[str | None] = mapped_column(String(200))
    first_touch_campaign: Mapped[str | None] = mapped_column(String(200))
    last_touch_at: Mapped[datetime | None]
    last_touch_channel: Mapped[str | None] = mapped_column(String(32))
    last_touch_source: Mapped[str | None] = mapped_column(String(200))
    last_touch_medium: Mapped[str | None] = mapped_column(String(200))
    last_touch_campaign: Mapped[str | None] = mapped_column(String(200))
    page_views: Mapped[int] = mapped_column(Integer, default=0)
    event_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)

    lifecycle_stage: Mapped[str | None] = mapped_column(String(32), index=True)
    email_consent: Mapped[str] = mapped_column(String(16), default="unknown")
    sms_consent: Mapped[str] = mapped_column(String(16), default="unknown")
    email_unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    sms_unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)

    merged_into_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("contacts.id"))


class Identity(Base):
    """One identifier (anonymous id, user id, email, phone) and the contact it belongs to."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("kind", "value"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """Something a contact did, enriched at ingest; the timeline and the change feed read it."""

    __tablename__ = "events"
    __table_args__ = (
        # message_id first, so the duplicate check can look message ids up on their own.
        UniqueConstraint("message_id", "source_id"),
        Index("ix_events_contact_timestamp", "contact_id", "timestamp"),
        # Behaviour in segments ("did X within D days") reads contact ids from these alone.
        Index("ix_events_name_timestamp", "name", "timestamp", postgresql_include=["contact_id"]),
        Index(
            "ix_events_page_path_timestamp",
            "path",
            "timestamp",
            postgresql_include=["contact_id"],
            postgresql_where=text("type = 'page'"),
            sqlite_where=text("type = 'page'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    source_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    message_id: Mapped[str] = mapped_column(String(200))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    anonymous_id: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(200))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timestamp: Mapped[datetime]
    original_timestamp: Mapped[datetime | None]
    received_at: Mapped[datetime]
    visit_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    url: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)
    referrer: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(String(32))
    device_type: Mapped[str | None] = mapped_column(String(16))
    os: Mapped[str | None] = mapped_column(String(64))
    browser: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))


class Visit(UUIDPrimaryKey, Base):
    """A session: a run of events with no gap longer than the timeout, with its channel."""

    __tablename__ = "visits"
    __table_args__ = (Index("ix_visits_contact_last_event", "contact_id", "last_event_at"),)

    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    source_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    started_at: Mapped[datetime]
    last_event_at: Mapped[datetime]
    channel: Mapped[str] = mapped_column(String(32))
    utm_source: Mapped[str | None] = mapped_column(String(200))
    utm_medium: Mapped[str | None] = mapped_column(String(200))
    utm_campaign: Mapped[str | None] = mapped_column(String(200))
    utm_term: Mapped[str | None] = mapped_column(String(200))
    utm_content: Mapped[str | None] = mapped_column(String(200))
    click_id_kind: Mapped[str | None] = mapped_column(String(16))
    click_id: Mapped[str | None] = mapped_column(String(300))
    landing_url: Mapped[str | None] = mapped_column(Text)
    referrer: Mapped[str | None] = mapped_column(Text)
    page_views: Mapped[int] = mapped_column(Integer, default=0)
    event_count: Mapped[int] = mapped_column(Integer, default=0)


class BotHit(Base):
    """Bots are counted per source, day and bot family, and kept out of profiles."""

    __tablename__ = "bot_hits"
    __table_args__ = (UniqueConstraint("source_id", "day", "bot"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    source_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    day: Mapped[date] = mapped_column(Date)
    bot: Mapped[str] = mapped_column(String(100))
    hits: Mapped[int] = mapped_column(BigInteger, default=0)


class ConsentRecord(Base):
    """Proof of a consent decision (PIPL): the text shown, when, where and from which IP."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16))
    granted: Mapped[bool] = mapped_column(Boolean)
    text: Mapped[str] = mapped_column(Text)
    source_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    form_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    ip: Mapped[str | None] = mapped_column(String(64))
    page_url: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Form(UUIDPrimaryKey, Timestamps, Base):
    """A marketer-defined form: typed fields, consent checkboxes and a honeypot."""

    __tablename__ = "forms"

    source_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sources.id"))
    name: Mapped[str] = mapped_column(String(200))
    fields: Mapped[list[Any]] = mapped_column(default=list)
    consents: Mapped[list[Any]] = mapped_column(default=list)
    honeypot_field: Mapped[str] = mapped_column(String(64), default="website_url")
    submit_label: Mapped[str] = mapped_column(String(100), default="Submit")
    success_message: Mapped[str] = mapped_column(Text, default="Thank you!")
    redirect_url: Mapped[str | None] = mapped_column(Text)
    archived_at: Mapped[datetime | None]


class FormSubmission(Base):
    """Every submission kept: accepted ones point at their contact, honeypot hits are spam."""

    __tablename__ = "form_submissions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    form_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("forms.id"), index=True)
    contact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    anonymous_id: Mapped[str | None] = mapped_column(String(200))
    ip: Mapped[str | None] = mapped_column(String(64))
    page_url: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
