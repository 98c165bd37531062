"""Journeys' tables: segments (dynamic and static) with their members and history; journeys,
their frozen versions, entry triggers, enrollments and each enrollment's step history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from core.models import Base, BigIntId, Timestamps, UUIDPrimaryKey, partial_index, utcnow

DYNAMIC = "dynamic"
STATIC = "static"
RUNNING = ("active", "waiting")


class Segment(UUIDPrimaryKey, Timestamps, Base):
    """An audience: dynamic ones follow their condition, static ones are imported lists."""

    __tablename__ = "segments"

    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    condition: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    rebuilt_at: Mapped[datetime | None]


class SegmentMember(Base):
    """A contact currently in a segment, and since when."""

    __tablename__ = "segment_members"

    segment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    entered_at: Mapped[datetime] = mapped_column(default=utcnow)


class SegmentChange(Base):
    """One entry into or exit from a segment; also published on the change feed."""

    __tablename__ = "segment_changes"
    __table_args__ = (Index("ix_segment_changes_segment_id_id", "segment_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    segment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"))
    contact_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    change: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Journey(UUIDPrimaryKey, Timestamps, Base):
    """A journey: its editable draft, its lifecycle status and the version new contacts enter."""

    __tablename__ = "journeys"

    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    draft: Mapped[dict[str, Any]] = mapped_column(default=dict)
    live_version_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class JourneyVersion(UUIDPrimaryKey, Base):
    """A published definition, frozen: contacts in flight keep the version they entered."""

    __tablename__ = "journey_versions"
    __table_args__ = (
        Index("ix_journey_versions_journey_number", "journey_id", "number", unique=True),
    )

    journey_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    published_at: Mapped[datetime] = mapped_column(default=utcnow)


class JourneyTrigger(Base):
    """The entry trigger of a live version, indexed by event name so that matching an event
    looks up only the journeys it can start."""

    __tablename__ = "journey_triggers"

    journey_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("journeys.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), index=True)
    event_name: Mapped[str | None] = mapped_column(String(200), index=True)
    segment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)


class Enrollment(UUIDPrimaryKey, Base):
    """One contact in one journey version: where it is, when it runs next, how it ended."""

    __tablename__ = "enrollments"
    __table_args__ = (
        Index("ix_enrollments_due", "next_run_at"),
        Index("ix_enrollments_journey_contact", "journey_id", "contact_id"),
        # At most one running enrollment per contact and journey.
        partial_index(
            "ix_enrollments_one_running",
            "journey_id",
            "contact_id",
            where="status IN ('active', 'waiting')",
            unique=True,
        ),
        # A date trigger enrolls a contact at most once per date value (its entry key).
        partial_index(
            "ix_enrollments_entry_key",
            "journey_id",
            "contact_id",
            "entry_key",
            where="entry_key IS NOT NULL",
            unique=True,
        ),
    )

    journey_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("journey_versions.id"))
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="active")
    current_node: Mapped[str] = mapped_column(String(100))
    next_run_at: Mapped[datetime | None]
    wake_at: Mapped[datetime | None]
    waiting_since: Mapped[datetime | None]
    waiting_for_event: Mapped[str | None] = mapped_column(String(200))
    entered_at: Mapped[datetime] = mapped_column(default=utcnow)
    entry_key: Mapped[str | None] = mapped_column(String(200))
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)


class EnrollmentStep(Base):
    """One node run for one enrollment, held once by its idempotency key."""

    __tablename__ = "enrollment_steps"
    __table_args__ = (Index("ix_enrollment_steps_enrollment_id_id", "enrollment_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("enrollments.id", ondelete="CASCADE")
    )
    journey_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    version_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    node_id: Mapped[str] = mapped_column(String(100))
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    result: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)
