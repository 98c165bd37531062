"""Request and response models of the scoring admin API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scoring.lifecycle import ALL_STAGES

Points = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-10_000, le=10_000)]
Grade = Literal["A", "B", "C", "D", "E", "F"]
Stage = Literal[ALL_STAGES]  # type: ignore[valid-type]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str | None = Field(default=None, max_length=200)
    op: str = Field(max_length=20)
    value: Any = None


class RuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["behavior", "fit"]
    name: str = Field(min_length=1, max_length=200)
    points: Points
    event_type: Literal["track", "page"] | None = None
    event_name: str | None = Field(default=None, min_length=1, max_length=200)
    trait: str | None = Field(default=None, min_length=1, max_length=100)
    conditions: list[Condition] = Field(default_factory=list, max_length=20)
    daily_limit: int | None = Field(default=None, strict=True, ge=1, le=10_000)
    first_time_only: bool = False
    enabled: bool = True


class RuleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    points: Points | None = None
    event_type: Literal["track", "page"] | None = None
    event_name: str | None = Field(default=None, min_length=1, max_length=200)
    trait: str | None = Field(default=None, min_length=1, max_length=100)
    conditions: list[Condition] | None = Field(default=None, max_length=20)
    daily_limit: int | None = Field(default=None, strict=True, ge=1, le=10_000)
    first_time_only: bool | None = None
    enabled: bool | None = None


class RuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    kind: str
    name: str
    points: float
    event_type: str | None
    event_name: str | None
    trait: str | None
    conditions: list[dict[str, Any]]
    daily_limit: int | None
    first_time_only: bool
    enabled: bool
    version: int
    scored_version: int
    created_at: datetime
    updated_at: datetime


class RuleVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    version: int
    action: str
    definition: dict[str, Any]
    changed_by: uuid.UUID | None
    changed_at: datetime


class SettingsRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    half_life_days: float
    mql_threshold: float
    mql_min_grade: str
    grade_thresholds: dict[str, float]
    label_days: int
    min_positives: int
    updated_at: datetime


class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    half_life_days: float | None = Field(default=None, strict=True, gt=0, le=3650)
    mql_threshold: Points | None = None
    mql_min_grade: Grade | None = None
    grade_thresholds: dict[str, float] | None = None
    label_days: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=365,
        description="The predictive label: became an opportunity within this many days of a "
        "snapshot (default 60). Training needs two such windows of history.",
    )
    min_positives: int | None = Field(default=None, strict=True, ge=1, le=1_000_000)


class AdjustmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: Points
    note: str = Field(min_length=3, max_length=500)


class StageChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    reason: str = Field(min_length=3, max_length=500)


class LedgerLine(BaseModel):
    id: int
    cause: str
    rule_id: uuid.UUID | None
    rule_name: str | None
    rule_version: int | None
    event_id: int | None
    event: str | None
    points: float  # what the line counts now (an award counts its rule's current points)
    points_when_recorded: float
    points_now: float  # after decay to now (0 for a decay line: the others already show it)
    occurred_at: datetime
    recorded_at: datetime
    note: str | None


class RuleTotal(BaseModel):
    rule_id: uuid.UUID | None
    rule_name: str
    cause: str
    lines: int
    points: float
    points_now: float


class FitFactor(BaseModel):
    rule_id: uuid.UUID
    rule_name: str
    trait: str
    points: float


class Prediction(BaseModel):
    using: Literal["model", "rule_score"]
    probability: float | None
    model_version: int | None
    factors: list[str]
    predicted_at: datetime | None


class ScoreBreakdown(BaseModel):
    contact_id: uuid.UUID
    lifecycle_stage: str | None
    score: float
    stored_score: float  # the sum of every ledger line's points, as of `stored_as_of`
    stored_as_of: datetime | None
    decay_since_stored: float  # not yet written down: score = stored_score + this
    half_life_days: float
    grade: str
    fit_points: float
    fit: list[FitFactor]
    by_rule: list[RuleTotal]
    lines: list[LedgerLine]
    lines_shown: int
    lines_total: int
    prediction: Prediction


class TransitionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    from_stage: str | None
    to_stage: str
    cause: str
    reason: str | None
    event_id: int | None
    actor_key_id: uuid.UUID | None
    occurred_at: datetime


class ModelVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    version: int
    status: str
    reason: str
    algorithm: str | None
    label_days: int
    trained_at: datetime
    holdout_cutoff: datetime | None
    train_rows: int
    train_positives: int
    holdout_rows: int
    holdout_positives: int
    metrics: dict[str, Any]


class ModelStatus(BaseModel):
    using: Literal["model", "rule_score"]
    reason: str
    positive_outcomes: int
    min_positives: int
    label_days: int
    active: ModelVersionRead | None
