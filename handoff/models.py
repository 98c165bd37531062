"""Handoff's tables: teams and reps, routing rules, leads with their assignments, and every
routing decision with the reps it skipped."""

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
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models import Base, BigIntId, Timestamps, UUIDPrimaryKey, utcnow

DEFAULT_SLA_MINUTES = 15
OPEN_STATUSES = ("queued", "waiting", "assigned", "accepted", "opportunity")


class Team(UUIDPrimaryKey, Timestamps, Base):
    """A sales team, its SLA and the robot that alerts its managers (members with the
    manager role)."""

    __tablename__ = "handoff_teams"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    sla_minutes: Mapped[int] = mapped_column(Integer, default=DEFAULT_SLA_MINUTES)
    robot_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("robots.id"))


class Rep(UUIDPrimaryKey, Timestamps, Base):
    """A user who takes leads (role rep) or leads a team (role manager); an API key whose
    `user_id` is this id acts as this user."""

    __tablename__ = "handoff_reps"

    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16), default="rep")
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("handoff_teams.id"), index=True)
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")
    work_days: Mapped[list[Any]] = mapped_column(default=lambda: [1, 2, 3, 4, 5])
    work_start: Mapped[str] = mapped_column(String(5), default="09:00")
    work_end: Mapped[str] = mapped_column(String(5), default="18:00")
    territories: Mapped[list[Any]] = mapped_column(default=list)
    industries: Mapped[list[Any]] = mapped_column(default=list)
    capacity: Mapped[int] = mapped_column(Integer, default=20)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    on_duty: Mapped[bool] = mapped_column(Boolean, default=True)
    robot_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("robots.id"))
    notify_by_email: Mapped[bool] = mapped_column(Boolean, default=False)


class RoutingRule(UUIDPrimaryKey, Timestamps, Base):
    """One step of the routing order: lower positions are tried first, the first match wins."""

    __tablename__ = "handoff_rules"

    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(20))
    strategy: Mapped[str] = mapped_column(String(16), default="fewest_open")
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("handoff_teams.id"))
    # In the condition language journeys and segments share (journeys.conditions).
    condition: Mapped[dict[str, Any] | None]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Lead(UUIDPrimaryKey, Timestamps, Base):
    """One handoff of a contact to sales, from routing to its outcome."""

    __tablename__ = "handoff_leads"
    __table_args__ = (Index("ix_handoff_leads_contact_status", "contact_id", "status"),)

    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    external_deal_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    rep_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("handoff_reps.id"), index=True)
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("handoff_teams.id"))
    trigger: Mapped[str] = mapped_column(String(32))
    mql_at: Mapped[datetime]
    assigned_at: Mapped[datetime | None]
    accept_by: Mapped[datetime | None] = mapped_column(index=True)
    accepted_at: Mapped[datetime | None]
    first_contact_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sla_breaches: Mapped[int] = mapped_column(Integer, default=0)
    amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    revenue_fen: Mapped[int | None] = mapped_column(BigInteger)
    close_date: Mapped[date | None] = mapped_column(Date)
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    closed_at: Mapped[datetime | None]


class Assignment(Base):
    """One rep holding a lead, from assignment until acceptance, reassignment or close."""

    __tablename__ = "handoff_assignments"
    __table_args__ = (UniqueConstraint("lead_id", "seq"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    lead_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("handoff_leads.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    rep_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("handoff_reps.id"))
    assigned_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))


class RoutingDecision(Base):
    """Why a lead went where it went: the rule that matched and each rep skipped, with why."""

    __tablename__ = "handoff_decisions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    lead_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("handoff_leads.id", ondelete="CASCADE"), index=True
    )
    trigger: Mapped[str] = mapped_column(String(32))
    rule_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("handoff_rules.id"))
    rule_name: Mapped[str] = mapped_column(String(200))
    rule_kind: Mapped[str] = mapped_column(String(20))
    rep_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("handoff_reps.id"))
    skipped: Mapped[list[Any]] = mapped_column(default=list)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class LeadActivity(Base):
    """What happened to a lead, in order: every rep action, SLA breach and alert."""

    __tablename__ = "handoff_activities"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    lead_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("handoff_leads.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    rep_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("handoff_reps.id"))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
