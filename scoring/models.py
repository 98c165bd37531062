"""Scoring's tables: rules and their history, the score ledger, each contact's current scores,
lifecycle transitions, predictive model versions, and the simulator's ground truth."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models import Base, BigIntId, Timestamps, UUIDPrimaryKey, partial_index, utcnow

SETTINGS_ROW_ID = 1
# The predictive label: "became an opportunity within this many days". Long enough to cover
# the time from the behaviour that predicts an opportunity to the opportunity (B2B: weeks to
# months); a short window teaches the model when someone converts rather than whether.
DEFAULT_LABEL_DAYS = 60


class ScoringSettings(Base):
    """The one row of marketer-tunable knobs: decay, MQL thresholds, grades, model label."""

    __tablename__ = "scoring_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=SETTINGS_ROW_ID)
    half_life_days: Mapped[float] = mapped_column(Float, default=30.0)
    mql_threshold: Mapped[float] = mapped_column(Float, default=60.0)
    mql_min_grade: Mapped[str] = mapped_column(String(1), default="C")
    grade_thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    label_days: Mapped[int] = mapped_column(Integer, default=DEFAULT_LABEL_DAYS)
    min_positives: Mapped[int] = mapped_column(Integer, default=100)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ScoringRule(UUIDPrimaryKey, Timestamps, Base):
    """A behavioural rule (event + conditions → points) or a fit rule (trait condition → points)."""

    __tablename__ = "scoring_rules"

    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str | None] = mapped_column(String(16))
    event_name: Mapped[str | None] = mapped_column(String(200))
    trait: Mapped[str | None] = mapped_column(String(100))
    conditions: Mapped[list[Any]] = mapped_column(default=list)
    points: Mapped[float] = mapped_column(Float)
    daily_limit: Mapped[int | None] = mapped_column(Integer)
    first_time_only: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    scored_version: Mapped[int] = mapped_column(Integer, default=0)  # what the ledger reflects
    deleted_at: Mapped[datetime | None]


class ScoringRuleVersion(Base):
    """Every create, change and delete of a rule, with the definition it had afterwards."""

    __tablename__ = "scoring_rule_versions"
    __table_args__ = (UniqueConstraint("rule_id", "version"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    rule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scoring_rules.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    changed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoreEntry(Base):
    """One line of a contact's behavioural score. An award (`rule`) or `manual` adjustment is
    points at `occurred_at`, decaying from there; a `decay` line writes down how much the score
    cooled since its previous write, so the lines sum to the stored score at its as-of time.

    Award lines are unique per (rule, event), so a redelivered event never scores twice.
    """

    __tablename__ = "score_ledger"
    __table_args__ = (
        # Award lines only: decay and manual lines (a million at a time when a rule changes)
        # carry no rule and stay out of the index.
        partial_index(
            "uq_score_ledger_rule_event",
            "rule_id",
            "event_id",
            where="rule_id IS NOT NULL",
            unique=True,
        ),
        Index("ix_score_ledger_contact_occurred", "contact_id", "occurred_at"),
        # Only journey steps' lines carry a key; rule and decay lines (millions, written by
        # rescoring) stay out of the index.
        partial_index(
            "uq_score_ledger_idempotency_key",
            "idempotency_key",
            where="idempotency_key IS NOT NULL",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # No foreign key: checking one per line cost a third of a million-contact rescore. Lines
    # are written only for stored contacts and erased with them (`scorer.forget_contacts`).
    contact_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    cause: Mapped[str] = mapped_column(String(16))
    rule_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # the unique index leads with it
    rule_version: Mapped[int | None] = mapped_column(Integer)
    event_id: Mapped[int | None] = mapped_column(BigIntId)
    points: Mapped[float] = mapped_column(Float)
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # A journey step's key: the step run again adds no second line.
    idempotency_key: Mapped[str | None] = mapped_column(String(300))


class ContactScore(Base):
    """A contact's scores kept ready to read: the behavioural score as of `behavior_as_of` (the
    sum of its ledger lines; multiply by 0.5 ** (elapsed / half-life) for any later time), fit,
    grade, probability."""

    __tablename__ = "contact_scores"
    # Half of each page left free: a rescore of every contact updates each row in place (HOT),
    # without touching the indexes.
    __table_args__ = {"postgresql_with": {"fillfactor": 50}}

    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    behavior_score: Mapped[float] = mapped_column(Float, default=0.0)
    behavior_as_of: Mapped[datetime]
    fit_points: Mapped[float] = mapped_column(Float, default=0.0)
    grade: Mapped[str] = mapped_column(String(1), default="F")
    # Not indexed: an index would make every prediction refresh and rescore rewrite both
    # indexes (no in-place update), for segment conditions that read most rows anyway.
    probability: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[int | None] = mapped_column(Integer)
    factors: Mapped[list[Any]] = mapped_column(default=list)
    predicted_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LifecycleTransition(Base):
    """A contact moving from one lifecycle stage to another, with when and why."""

    __tablename__ = "lifecycle_transitions"
    __table_args__ = (Index("ix_lifecycle_transitions_contact_at", "contact_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    from_stage: Mapped[str | None] = mapped_column(String(32))
    to_stage: Mapped[str] = mapped_column(String(32))
    cause: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[int | None] = mapped_column(BigIntId)
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class PredictiveModel(Base):
    """One training run: its holdout metrics, and (when trained) the signed model artifact."""

    __tablename__ = "predictive_models"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text)
    algorithm: Mapped[str | None] = mapped_column(String(100))
    label_days: Mapped[int] = mapped_column(Integer)
    trained_at: Mapped[datetime] = mapped_column(default=utcnow)
    holdout_cutoff: Mapped[datetime | None]
    train_rows: Mapped[int] = mapped_column(Integer, default=0)
    train_positives: Mapped[int] = mapped_column(Integer, default=0)
    holdout_rows: Mapped[int] = mapped_column(Integer, default=0)
    holdout_positives: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    feature_names: Mapped[list[Any]] = mapped_column(default=list)
    artifact: Mapped[bytes | None] = mapped_column(LargeBinary)
    artifact_signature: Mapped[str | None] = mapped_column(String(64))


class SimulationRun(Base):
    """One `nurture simulate` run: its parameters and the true effects it generated with."""

    __tablename__ = "sim_runs"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    seed: Mapped[int] = mapped_column(Integer)
    contacts: Mapped[int] = mapped_column(Integer)
    days: Mapped[int] = mapped_column(Integer)
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    via: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    true_effects: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SimulatedContact(Base):
    """Ground truth for one simulated contact: its true conversion probability and outcome."""

    __tablename__ = "sim_contacts"
    __table_args__ = (UniqueConstraint("run_id", "person"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sim_runs.id", ondelete="CASCADE"))
    person: Mapped[int] = mapped_column(Integer)
    anonymous_id: Mapped[str] = mapped_column(String(200))
    contact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    intent: Mapped[float] = mapped_column(Float)
    fit_log_odds: Mapped[float] = mapped_column(Float)
    true_probability: Mapped[float] = mapped_column(Float)
    first_channel: Mapped[str] = mapped_column(String(32))
    identified_at: Mapped[datetime | None]
    converted: Mapped[bool] = mapped_column(Boolean)
    converted_at: Mapped[datetime | None]
    won: Mapped[bool] = mapped_column(Boolean)
    won_at: Mapped[datetime | None]
    revenue_cny: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))


class SimulatedChannel(Base):
    """Ground truth for one marketing channel: its true effect and the conversions it caused."""

    __tablename__ = "sim_channels"
    __table_args__ = (UniqueConstraint("run_id", "channel"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sim_runs.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    log_odds_effect: Mapped[float] = mapped_column(Float)
    contacts_touched: Mapped[int] = mapped_column(Integer)
    incremental_conversions: Mapped[float] = mapped_column(Float)
    incremental_revenue_cny: Mapped[Decimal] = mapped_column(Numeric(16, 2))


class SimulatedCampaignCost(Base):
    """What one simulated campaign cost on one day, in CNY."""

    __tablename__ = "sim_campaign_costs"
    __table_args__ = (UniqueConstraint("run_id", "campaign", "day"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sim_runs.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    channel: Mapped[str] = mapped_column(String(32))
    campaign: Mapped[str] = mapped_column(String(200))
    utm_source: Mapped[str | None] = mapped_column(String(200))
    utm_medium: Mapped[str | None] = mapped_column(String(200))
    cost_cny: Mapped[Decimal] = mapped_column(Numeric(14, 2))
