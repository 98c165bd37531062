"""Request and response shapes of the handoff API."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from handoff.models import DEFAULT_SLA_MINUTES
from handoff.territories import check_territory
from journeys.conditions import parse

HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
RuleKind = Literal["existing_owner", "territory", "industry", "pool", "fallback"]
Strategy = Literal["weighted", "fewest_open"]
RepRole = Literal["rep", "manager"]


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    sla_minutes: int = Field(default=DEFAULT_SLA_MINUTES, ge=1, le=7 * 24 * 60)
    robot_id: uuid.UUID | None = None


class TeamUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    sla_minutes: int | None = Field(default=None, ge=1, le=7 * 24 * 60)
    robot_id: uuid.UUID | None = None


class TeamRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    sla_minutes: int
    robot_id: uuid.UUID | None


class Territory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["province", "city", "country"]
    name: str = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _canonical(self) -> Territory:
        self.name = check_territory(self.kind, self.name)
        return self


class RepFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("timezone", check_fields=False)
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"{value!r} is not an IANA time zone") from exc
        return value

    @field_validator("work_start", "work_end", check_fields=False)
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        if value is not None and not HHMM.match(value):
            raise ValueError("must be a time of day as HH:MM")
        return value

    @field_validator("work_days", check_fields=False)
    @classmethod
    def _days(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value or any(not 1 <= day <= 7 for day in value):
                raise ValueError("must list ISO weekdays from 1 (Monday) to 7 (Sunday)")
            return sorted(set(value))
        return value

    @field_validator("industries", check_fields=False)
    @classmethod
    def _industries(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            cleaned = [item.strip().lower() for item in value]
            if any(not item or len(item) > 100 for item in cleaned):
                raise ValueError("each industry or product line is 1 to 100 characters")
            return sorted(set(cleaned))
        return value


class RepCreate(RepFields):
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    role: RepRole = "rep"
    team_id: uuid.UUID | None = None
    timezone: str = "Asia/Shanghai"
    work_days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    work_start: str = "09:00"
    work_end: str = "18:00"
    territories: list[Territory] = Field(default_factory=list, max_length=500)
    industries: list[str] = Field(default_factory=list, max_length=200)
    capacity: int = Field(default=20, ge=0, le=10_000)
    weight: int = Field(default=1, ge=1, le=100)
    on_duty: bool = True
    robot_id: uuid.UUID | None = None
    notify_by_email: bool = False

    @model_validator(mode="after")
    def _hours_order(self) -> RepCreate:
        if self.work_start >= self.work_end:
            raise ValueError("work_start must be before work_end")
        return self


class RepUpdate(RepFields):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    role: RepRole | None = None
    team_id: uuid.UUID | None = None
    timezone: str | None = None
    work_days: list[int] | None = None
    work_start: str | None = None
    work_end: str | None = None
    territories: list[Territory] | None = Field(default=None, max_length=500)
    industries: list[str] | None = Field(default=None, max_length=200)
    capacity: int | None = Field(default=None, ge=0, le=10_000)
    weight: int | None = Field(default=None, ge=1, le=100)
    on_duty: bool | None = None
    robot_id: uuid.UUID | None = None
    notify_by_email: bool | None = None


class RepRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    email: str | None
    role: str
    team_id: uuid.UUID | None
    timezone: str
    work_days: list[int]
    work_start: str
    work_end: str
    territories: list[dict[str, Any]]
    industries: list[str]
    capacity: int
    weight: int
    on_duty: bool
    robot_id: uuid.UUID | None
    notify_by_email: bool


def check_condition(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        parse(value)
    return value


class RuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    position: int = Field(ge=0, le=10_000)
    kind: RuleKind
    strategy: Strategy = "fewest_open"
    team_id: uuid.UUID | None = None
    condition: dict[str, Any] | None = None
    enabled: bool = True

    _condition = field_validator("condition")(check_condition)


class RuleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    position: int | None = Field(default=None, ge=0, le=10_000)
    strategy: Strategy | None = None
    team_id: uuid.UUID | None = None
    condition: dict[str, Any] | None = None
    enabled: bool | None = None

    _condition = field_validator("condition")(check_condition)


class RuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    position: int
    kind: str
    strategy: str
    team_id: uuid.UUID | None
    condition: dict[str, Any] | None
    enabled: bool


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_id: uuid.UUID


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rep_id: uuid.UUID


class RejectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Literal["not_a_fit", "duplicate", "spam", "wrong_territory"]
    note: str | None = Field(default=None, max_length=2000)


class AttemptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["phone", "email", "wechat", "sms", "meeting", "other"]
    note: str | None = Field(default=None, max_length=2000)


class OpportunityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_fen: int = Field(ge=0)
    close_date: date


class WonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revenue_fen: int = Field(ge=0)
    close_date: date


class LostRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


class CrmOutcome(BaseModel):
    """An outcome from an external CRM, keyed by its deal id; the first call for a deal names
    the lead it belongs to."""

    model_config = ConfigDict(extra="forbid")

    external_deal_id: str = Field(min_length=1, max_length=200)
    lead_id: uuid.UUID | None = None
    outcome: Literal["opportunity", "won", "lost"]
    amount_fen: int | None = Field(default=None, ge=0)
    close_date: date | None = None
    reason: str | None = Field(default=None, min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _fields_for_outcome(self) -> CrmOutcome:
        if self.outcome in ("opportunity", "won") and (
            self.amount_fen is None or self.close_date is None
        ):
            raise ValueError(f"'{self.outcome}' needs amount_fen and close_date")
        if self.outcome == "lost" and self.reason is None:
            raise ValueError("'lost' needs a reason")
        return self


class DecisionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    trigger: str
    rule_id: uuid.UUID | None
    rule_name: str
    rule_kind: str
    rep_id: uuid.UUID | None
    skipped: list[dict[str, Any]]
    decided_at: datetime


class ActivityRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str
    rep_id: uuid.UUID | None
    details: dict[str, Any]
    occurred_at: datetime


class LeadRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    contact_id: uuid.UUID
    status: str
    rep_id: uuid.UUID | None
    team_id: uuid.UUID | None
    trigger: str
    external_deal_id: str | None
    mql_at: datetime
    assigned_at: datetime | None
    accept_by: datetime | None
    accepted_at: datetime | None
    first_contact_at: datetime | None
    attempts: int
    sla_breaches: int
    amount_fen: int | None
    revenue_fen: int | None
    close_date: date | None
    outcome_reason: str | None
    closed_at: datetime | None


class LeadDetail(LeadRead):
    decisions: list[DecisionRead]
    activities: list[ActivityRead]
