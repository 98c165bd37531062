"""Attribution's tables: campaigns and their daily costs, conversions, and the credits each
model run gave to every touch before every conversion. Money is integer fen (分)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models import Base, BigIntId, Timestamps, UUIDPrimaryKey, utcnow


class ConversionKind(StrEnum):
    lead = "lead"
    mql = "mql"
    opportunity = "opportunity"
    won = "won"


class Campaign(UUIDPrimaryKey, Timestamps, Base):
    """A campaign, keyed by its `utm_campaign` (or `journey:<id>` for our own messages)."""

    __tablename__ = "attribution_campaigns"

    key: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(300))


class CampaignCost(Base):
    """What a campaign cost on one channel on one day; re-importing the same day replaces it."""

    __tablename__ = "attribution_campaign_costs"
    __table_args__ = (UniqueConstraint("campaign_id", "channel", "day"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("attribution_campaigns.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(32))
    day: Mapped[date] = mapped_column(Date, index=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Conversion(Base):
    """A contact became a lead or an MQL, or an opportunity was created or won, worth value_fen.

    `external_ref` names the deal (or is empty for once-per-contact milestones), so recording
    the same conversion twice changes nothing."""

    __tablename__ = "attribution_conversions"
    __table_args__ = (
        UniqueConstraint("contact_id", "kind", "external_ref"),
        Index("ix_attribution_conversions_kind_occurred_at", "kind", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    value_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    occurred_at: Mapped[datetime]
    external_ref: Mapped[str] = mapped_column(String(200), default="")
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class CreditRun(Base):
    """The credits of every conversion under one model and its parameters, extended in the
    background as conversions arrive; reports only read them.

    A Markov run also keeps its fit: each conversion kind's removal effect per key, learnt
    from all paths at `fitted_at`. New conversions are credited from it until the next refit
    rewrites every credit of the run."""

    __tablename__ = "attribution_credit_runs"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    parameters: Mapped[str] = mapped_column(String(200), unique=True)
    model: Mapped[str] = mapped_column(String(32))
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)
    fit: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fit_version: Mapped[int] = mapped_column(Integer, default=0)
    fitted_at: Mapped[datetime | None]
    fitted_conversions: Mapped[int] = mapped_column(Integer, default=0)


class RunConversion(Base):
    """One conversion as a run credited it: its value, how many touches it had in the lookback
    window and the fen no touch received (its whole value when it had none)."""

    __tablename__ = "attribution_run_conversions"
    __table_args__ = (
        Index(
            "ix_attribution_run_conversions_run_kind_converted_at", "run_id", "kind", "converted_at"
        ),
    )

    run_id: Mapped[int] = mapped_column(
        ForeignKey("attribution_credit_runs.id", ondelete="CASCADE"), primary_key=True
    )
    conversion_id: Mapped[int] = mapped_column(
        ForeignKey("attribution_conversions.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    converted_at: Mapped[datetime]
    value_fen: Mapped[int] = mapped_column(BigInteger)
    touches: Mapped[int] = mapped_column(Integer)
    unattributed_fen: Mapped[int] = mapped_column(BigInteger)


class Credit(Base):
    """The fen (and the share) of one conversion's value that a run gave to one touch before
    it. Every touch in the lookback window has a row, even with no credit, so a run also
    holds each conversion's whole path. The conversion's value and whether the touch is the
    path's first on its channel (or campaign) are kept on the row, so that sourced (first
    touch) and influenced (any touch) pipeline add up in the same scan as the credits."""

    __tablename__ = "attribution_credits"
    __table_args__ = (
        Index("ix_attribution_credits_run_kind_converted_at", "run_id", "kind", "converted_at"),
        Index("ix_attribution_credits_run_conversion", "run_id", "conversion_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("attribution_credit_runs.id", ondelete="CASCADE")
    )
    conversion_id: Mapped[int] = mapped_column(
        ForeignKey("attribution_conversions.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(16))
    converted_at: Mapped[datetime]
    position: Mapped[int] = mapped_column(Integer)
    touched_at: Mapped[datetime]
    channel: Mapped[str] = mapped_column(String(32))
    campaign: Mapped[str | None] = mapped_column(String(200))
    touch_source: Mapped[str] = mapped_column(String(16))
    touch_ref: Mapped[str] = mapped_column(String(64))
    credit_fen: Mapped[int] = mapped_column(BigInteger)
    share: Mapped[float] = mapped_column(Float)
    value_fen: Mapped[int] = mapped_column(BigInteger)
    first_for_channel: Mapped[bool] = mapped_column(Boolean)
    first_for_campaign: Mapped[bool] = mapped_column(Boolean)
