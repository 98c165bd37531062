"""Request and response models of the admin API for contacts, sources and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from capture.identity import CONTROL_CHARACTERS
from capture.sources import normalize_origin
from core.keys import Role

MAX_TRAIT_KEY_LENGTH = 100
MAX_TRAIT_VALUE_BYTES = 10 * 1024
MAX_TAG_LENGTH = 100
MAX_TAGS = 100
# Identity traits are owned by identity resolution (identify, forms, merge): editing them here
# would leave the contact's identities saying something else.
IDENTITY_TRAITS = frozenset({"email", "phone", "userId", "user_id"})


def reject_control_characters(text: str) -> str:
    if CONTROL_CHARACTERS.search(text):
        raise ValueError("must not contain control characters")
    return text


PlainText = Annotated[str, AfterValidator(reject_control_characters)]
Name = Annotated[PlainText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Tag = Annotated[
    PlainText, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_LENGTH)
]
TraitKey = Annotated[PlainText, StringConstraints(min_length=1, max_length=MAX_TRAIT_KEY_LENGTH)]


def _check_scalar(value: Any) -> None:
    if isinstance(value, dict | list):
        raise ValueError("must be a JSON scalar or an array of scalars")
    if isinstance(value, str):
        reject_control_characters(value)


def check_trait_value(value: JsonValue) -> JsonValue:
    for item in value if isinstance(value, list) else [value]:
        _check_scalar(item)
    if len(orjson.dumps(value)) > MAX_TRAIT_VALUE_BYTES:
        raise ValueError(f"must be at most {MAX_TRAIT_VALUE_BYTES} bytes as JSON")
    return value


TraitValue = Annotated[JsonValue, AfterValidator(check_trait_value)]


def check_origin(origin: str) -> str:
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) origin such as https://www.example.com")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must be an origin only: scheme, host and optional port")
    if parts.path not in ("", "/"):
        raise ValueError("must be an origin only, without a path")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port only when it is read
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    return normalize_origin(origin)


Origin = Annotated[str, StringConstraints(max_length=300), AfterValidator(check_origin)]


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# Contacts


class ContactSummary(ReadModel):
    id: uuid.UUID
    user_id: str | None
    email: str | None
    phone: str | None
    name: str | None
    is_known: bool
    lifecycle_stage: str | None
    tags: list[str]
    company_id: uuid.UUID | None
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    created_at: datetime


class ContactPage(BaseModel):
    items: list[ContactSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at end")


class IdentityRead(ReadModel):
    kind: str
    value: str
    created_at: datetime


class CompanyRead(ReadModel):
    id: uuid.UUID
    group_id: str
    name: str | None
    traits: dict[str, Any]


class Touch(BaseModel):
    at: datetime | None
    channel: str | None
    source: str | None
    medium: str | None
    campaign: str | None


class ConsentRecordRead(ReadModel):
    id: int
    channel: str
    granted: bool
    text: str
    recorded_at: datetime
    ip: str | None
    page_url: str | None
    source_id: uuid.UUID | None
    form_id: uuid.UUID | None


class ChannelConsent(BaseModel):
    status: str = Field(description="granted, denied or unknown")
    unsubscribed: bool
    latest_record: ConsentRecordRead | None


class ContactProfile(BaseModel):
    id: uuid.UUID
    merged_into: uuid.UUID | None = Field(
        description="set when this contact was merged: the id of the contact that holds its "
        "history now (its identities, events and consent moved there)"
    )
    user_id: str | None
    email: str | None
    phone: str | None
    name: str | None
    is_known: bool
    identities: list[IdentityRead]
    traits: dict[str, Any]
    tags: list[str]
    company: CompanyRead | None
    timezone: str | None
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    first_touch: Touch
    latest_touch: Touch
    page_views: int
    event_counts: dict[str, int]
    lifecycle_stage: str | None
    consent: dict[str, ChannelConsent] = Field(description="per channel: email and sms")
    unsubscribed: bool = Field(description="unsubscribed from every channel")
    suppressed: bool
    created_at: datetime
    updated_at: datetime


class DeviceRead(BaseModel):
    type: str | None
    os: str | None
    browser: str | None


class TimelineEvent(BaseModel):
    id: int
    type: str
    name: str | None
    timestamp: datetime
    properties: dict[str, Any]
    url: str | None
    path: str | None
    referrer: str | None
    channel: str | None
    device: DeviceRead
    visit_id: uuid.UUID | None


class TimelinePage(BaseModel):
    items: list[TimelineEvent]
    next_cursor: str | None


class ContactUpdate(BaseModel):
    """Traits merge into the existing ones (`null` removes a trait); tags are either replaced
    whole (`tags`) or changed (`add_tags`, `remove_tags`)."""

    model_config = ConfigDict(extra="forbid")

    traits: dict[TraitKey, TraitValue | None] | None = Field(default=None, max_length=200)
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)
    add_tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)
    remove_tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)

    @field_validator("traits")
    @classmethod
    def _no_identity_traits(cls, traits: dict[str, Any] | None) -> dict[str, Any] | None:
        reserved = sorted(IDENTITY_TRAITS.intersection(traits or {}))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} are identities; they change through identify, "
                "a form submission or a merge"
            )
        return traits

    @field_validator("add_tags", "remove_tags")
    @classmethod
    def _not_with_tags(cls, tags: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if tags is not None and info.data.get("tags") is not None:
            raise ValueError("give either tags or add_tags/remove_tags, not both")
        return tags


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_contact_id: uuid.UUID = Field(description="the contact merged into the path's contact")


class VisitRead(ReadModel):
    id: uuid.UUID
    source_id: uuid.UUID
    started_at: datetime
    last_event_at: datetime
    channel: str
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    click_id_kind: str | None
    click_id: str | None
    landing_url: str | None
    referrer: str | None
    page_views: int
    event_count: int


class ExportedEvent(ReadModel):
    id: int
    source_id: uuid.UUID
    message_id: str
    type: str
    name: str | None
    anonymous_id: str | None
    user_id: str | None
    properties: dict[str, Any]
    context: dict[str, Any]
    timestamp: datetime
    original_timestamp: datetime | None
    received_at: datetime
    visit_id: uuid.UUID | None
    url: str | None
    path: str | None
    referrer: str | None
    channel: str | None
    device_type: str | None
    os: str | None
    browser: str | None
    ip: str | None


class FormSubmissionRead(ReadModel):
    id: int
    form_id: uuid.UUID
    status: str
    data: dict[str, Any]
    anonymous_id: str | None
    ip: str | None
    page_url: str | None
    user_agent: str | None
    created_at: datetime


class MergedContactRead(ReadModel):
    """A contact merged into the exported one: its history moved, its own row stays."""

    id: uuid.UUID
    user_id: str | None
    email: str | None
    phone: str | None
    traits: dict[str, Any]
    tags: list[str]
    created_at: datetime


class ContactExport(BaseModel):
    """Everything stored about one person (a PIPL access request)."""

    exported_at: datetime
    profile: ContactProfile
    identities: list[IdentityRead]
    events: list[ExportedEvent]
    visits: list[VisitRead]
    consent_records: list[ConsentRecordRead]
    form_submissions: list[FormSubmissionRead]
    merged_contacts: list[MergedContactRead]


# Sources


class SourceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    allowed_origins: list[Origin] = Field(default_factory=list, max_length=100)
    honor_do_not_track: bool = False


class SourceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    allowed_origins: list[Origin] | None = Field(default=None, max_length=100)
    honor_do_not_track: bool | None = None


class SourceRead(ReadModel):
    id: uuid.UUID
    name: str
    write_key_prefix: str
    allowed_origins: list[str]
    honor_do_not_track: bool
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SourceWithKey(SourceRead):
    write_key: str = Field(description="shown only in this response; store it now")


# API keys


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    role: Role


class ApiKeyRead(ReadModel):
    id: uuid.UUID
    name: str
    role: Role
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyWithSecret(ApiKeyRead):
    key: str = Field(description="shown only in this response; store it now")
