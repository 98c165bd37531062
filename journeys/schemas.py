"""Request and response models of the segments and journeys admin API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SegmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["dynamic", "static"] = "dynamic"
    condition: dict[str, Any] | None = None


class SegmentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    kind: str
    condition: dict[str, Any] | None
    created_at: datetime
    rebuilt_at: datetime | None
    member_count: int = 0


class ConditionCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: dict[str, Any]


class ConditionValid(BaseModel):
    valid: bool
    referenced_segments: list[uuid.UUID]


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: dict[str, Any]
    sample_size: int = Field(default=10, ge=0, le=100)


class ContactSample(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    email: str | None
    phone: str | None
    user_id: str | None
    lifecycle_stage: str | None
    traits: dict[str, Any]


class PreviewRead(BaseModel):
    count: int
    sample: list[ContactSample]


class MemberRead(BaseModel):
    contact_id: uuid.UUID
    email: str | None
    user_id: str | None
    entered_at: datetime


class MembersPage(BaseModel):
    items: list[MemberRead]
    next_after: uuid.UUID | None


class ChangeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    contact_id: uuid.UUID
    change: str
    at: datetime


class HistoryPage(BaseModel):
    items: list[ChangeRead]
    next_after: int | None


class RebuildRead(BaseModel):
    entered: int
    left: int
    member_count: int


class UnmatchedLine(BaseModel):
    line: int
    reason: str
    value: str | None = None


class ImportRead(BaseModel):
    lines: int
    matched: int
    added: int
    unmatched: list[UnmatchedLine]


class JourneyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    definition: dict[str, Any] = Field(default_factory=dict)


class JourneyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    definition: dict[str, Any] | None = None


class DefinitionCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    definition: dict[str, Any]


class JourneyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    status: str
    draft: dict[str, Any]
    live_version_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class VersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    journey_id: uuid.UUID
    number: int
    definition: dict[str, Any]
    published_at: datetime


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: uuid.UUID | None = None
    segment_id: uuid.UUID | None = None


class StepRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    node_id: str
    result: str
    idempotency_key: str
    detail: dict[str, Any]
    at: datetime


class EnrollmentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    journey_id: uuid.UUID
    version_id: uuid.UUID
    contact_id: uuid.UUID
    status: str
    current_node: str
    next_run_at: datetime | None
    entered_at: datetime
    entry_key: str | None = None
    finished_at: datetime | None
    outcome: str | None
    steps: list[StepRead] = Field(default_factory=list)


class SegmentEnrollRead(BaseModel):
    enrolled: int


class MadeUpEvent(BaseModel):
    """A made-up event: a `track` call with a name, or a `page` view (url, path; no name
    needed)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["track", "page", "screen"] = "track"
    name: str | None = Field(default=None, min_length=1, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)
    url: str | None = Field(default=None, max_length=2000)
    path: str | None = Field(default=None, max_length=2000)
    days_ago: float = Field(default=0, ge=0, le=3650)

    @model_validator(mode="after")
    def tracked_events_have_names(self) -> MadeUpEvent:
        if self.type == "track" and self.name is None:
            raise ValueError("a track event needs a name")
        return self


class MadeUpContact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    traits: dict[str, Any] = Field(default_factory=dict)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    lifecycle_stage: str | None = Field(default=None, max_length=32)
    email_consent: Literal["granted", "denied", "unknown"] = "unknown"
    sms_consent: Literal["granted", "denied", "unknown"] = "unknown"
    timezone: str | None = Field(default=None, max_length=64)
    events: list[MadeUpEvent] = Field(default_factory=list, max_length=1000)


class DryRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: uuid.UUID | None = None
    contact: MadeUpContact | None = None
