"""Contacts as the admin API sees them: search, profile, timeline, edits, merge, export, delete.

Plain functions taking a session; they flush and leave the commit to the caller.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, cast, delete, exists, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from api.errors import ApiError
from capture import merge
from capture.identity import normalize_email, normalize_phone
from capture.models import (
    Company,
    ConsentRecord,
    Contact,
    Event,
    FormSubmission,
    Identity,
    Visit,
)
from capture.schemas import (
    ChannelConsent,
    CompanyRead,
    ConsentRecordRead,
    ContactExport,
    ContactPage,
    ContactProfile,
    ContactSummary,
    ContactUpdate,
    DeviceRead,
    ExportedEvent,
    FormSubmissionRead,
    IdentityRead,
    MergedContactRead,
    TimelineEvent,
    TimelinePage,
    Touch,
    VisitRead,
)
from core import feed
from core.clock import clock
from core.db import is_postgres

CONTACT_DELETED = "contact_deleted"
CONSENT_CHANNELS = ("email", "sms")
NAME_TRAITS = ("name", "first_name", "last_name", "firstName", "lastName")
SEARCHABLE_IDENTITIES = ("email", "phone", "user_id")
_ABSENT = object()


@dataclass(frozen=True)
class ContactFilters:
    email: str | None = None
    phone: str | None = None
    user_id: str | None = None
    q: str | None = None
    lifecycle_stage: str | None = None
    tag: str | None = None


def not_found(contact_id: uuid.UUID) -> ApiError:
    return ApiError(404, "not_found", f"contact {contact_id} does not exist")


def get_contact(session: Session, contact_id: uuid.UUID, for_update: bool = False) -> Contact:
    contact = session.get(Contact, contact_id, with_for_update=for_update)
    if contact is None:
        raise not_found(contact_id)
    return contact


# Cursors are opaque to clients: base64 of the sort key of the last row on the page.


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise invalid_cursor() from exc
    if not isinstance(key, list) or len(key) != 2:
        raise invalid_cursor()
    return key


def invalid_cursor() -> ApiError:
    return ApiError(
        422,
        "invalid",
        "cursor is not valid; pass the next_cursor of a previous page",
        {"cursor": "is not a cursor this endpoint returned"},
    )


def _contact_cursor(cursor: str) -> tuple[datetime | None, uuid.UUID]:
    seen, contact_id = decode_cursor(cursor)
    try:
        return (datetime.fromisoformat(seen) if seen else None), uuid.UUID(contact_id)
    except (TypeError, ValueError) as exc:
        raise invalid_cursor() from exc


def _event_cursor(cursor: str) -> tuple[datetime, int]:
    timestamp, event_id = decode_cursor(cursor)
    if not isinstance(event_id, int) or not isinstance(timestamp, str):
        raise invalid_cursor()
    try:
        return datetime.fromisoformat(timestamp), event_id
    except ValueError as exc:
        raise invalid_cursor() from exc


# Search


def _has_identity(kind: str, value: str) -> ColumnElement[bool]:
    return exists().where(
        Identity.contact_id == Contact.id, Identity.kind == kind, Identity.value == value
    )


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    if is_postgres(session):
        return Contact.tags.op("@>")(cast([tag], JSONB))
    each = func.json_each(Contact.tags).table_valued("value")
    return exists().select_from(each).where(each.c.value == tag)


def _matches_text(q: str) -> ColumnElement[bool]:
    """Substring match (case-insensitive) on identities and name traits."""
    identity_match = exists().where(
        Identity.contact_id == Contact.id,
        Identity.kind.in_(SEARCHABLE_IDENTITIES),
        Identity.value.icontains(q, autoescape=True),
    )
    conditions: list[ColumnElement[bool]] = [identity_match]
    conditions += [
        Contact.traits[trait].as_string().icontains(q, autoescape=True) for trait in NAME_TRAITS
    ]
    phone = normalize_phone(q)
    if phone is not None:
        conditions.append(_has_identity("phone", phone))
    return or_(*conditions)


def _invalid_filter(field: str, problem: str) -> ApiError:
    return ApiError(422, "invalid", f"{field} {problem}", {field: problem})


def _filter_conditions(session: Session, filters: ContactFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Contact.merged_into_id.is_(None)]
    if filters.email is not None:
        email = normalize_email(filters.email)
        if email is None:
            raise _invalid_filter("email", "is not a valid email address")
        conditions.append(_has_identity("email", email))
    if filters.phone is not None:
        phone = normalize_phone(filters.phone)
        if phone is None:
            raise _invalid_filter(
                "phone", "is not a valid phone number (mainland China numbers may omit +86)"
            )
        conditions.append(_has_identity("phone", phone))
    if filters.user_id is not None:
        conditions.append(_has_identity("user_id", filters.user_id))
    if filters.q:
        conditions.append(_matches_text(filters.q))
    if filters.lifecycle_stage is not None:
        conditions.append(Contact.lifecycle_stage == filters.lifecycle_stage)
    if filters.tag is not None:
        conditions.append(_has_tag(session, filters.tag))
    return conditions


def _after_contact(cursor: str) -> ColumnElement[bool]:
    # Order is last_seen_at DESC NULLS FIRST, id DESC: PostgreSQL's backward scan of an
    # ascending index. Every contact built by ingest has been seen, so NULLs are rare.
    seen, contact_id = _contact_cursor(cursor)
    if seen is None:
        return or_(
            and_(Contact.last_seen_at.is_(None), Contact.id < contact_id),
            Contact.last_seen_at.is_not(None),
        )
    return or_(
        Contact.last_seen_at < seen, and_(Contact.last_seen_at == seen, Contact.id < contact_id)
    )


def list_contacts(
    session: Session, filters: ContactFilters, limit: int, cursor: str | None
) -> ContactPage:
    """Contacts newest-seen first, merged ones left out; one query per page."""
    conditions = _filter_conditions(session, filters)
    if cursor:
        conditions.append(_after_contact(cursor))
    rows = list(
        session.scalars(
            select(Contact)
            .where(*conditions)
            .order_by(Contact.last_seen_at.desc().nulls_first(), Contact.id.desc())
            .limit(limit + 1)
        )
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        seen = last.last_seen_at.isoformat() if last.last_seen_at else None
        next_cursor = encode_cursor(seen, str(last.id))
    return ContactPage(items=[summary(c) for c in rows], next_cursor=next_cursor)


def display_name(traits: dict[str, Any]) -> str | None:
    if isinstance(traits.get("name"), str) and traits["name"].strip():
        return str(traits["name"]).strip()
    first = traits.get("first_name") or traits.get("firstName")
    last = traits.get("last_name") or traits.get("lastName")
    joined = " ".join(str(part).strip() for part in (first, last) if part)
    return joined or None


def summary(contact: Contact) -> ContactSummary:
    return ContactSummary(
        id=contact.id,
        user_id=contact.user_id,
        email=contact.email,
        phone=contact.phone,
        name=display_name(contact.traits or {}),
        is_known=contact.is_known,
        lifecycle_stage=contact.lifecycle_stage,
        tags=list(contact.tags or []),
        company_id=contact.company_id,
        first_seen_at=contact.first_seen_at,
        last_seen_at=contact.last_seen_at,
        created_at=contact.created_at,
    )


# Profile


def _identities(session: Session, contact_id: uuid.UUID) -> list[IdentityRead]:
    rows = session.scalars(
        select(Identity).where(Identity.contact_id == contact_id).order_by(Identity.id)
    )
    return [IdentityRead.model_validate(row) for row in rows]


def _latest_consent(session: Session, contact_id: uuid.UUID) -> dict[str, ConsentRecord]:
    ranked = (
        select(
            ConsentRecord,
            func.row_number()
            .over(
                partition_by=ConsentRecord.channel,
                order_by=(ConsentRecord.recorded_at.desc(), ConsentRecord.id.desc()),
            )
            .label("rank"),
        )
        .where(ConsentRecord.contact_id == contact_id)
        .subquery()
    )
    latest = aliased(ConsentRecord, ranked)
    return {r.channel: r for r in session.scalars(select(latest).where(ranked.c.rank == 1))}


def _touch(contact: Contact, prefix: str) -> Touch:
    return Touch(
        at=getattr(contact, f"{prefix}_at"),
        channel=getattr(contact, f"{prefix}_channel"),
        source=getattr(contact, f"{prefix}_source"),
        medium=getattr(contact, f"{prefix}_medium"),
        campaign=getattr(contact, f"{prefix}_campaign"),
    )


def profile(session: Session, contact: Contact) -> ContactProfile:
    company = session.get(Company, contact.company_id) if contact.company_id else None
    records = _latest_consent(session, contact.id)
    consent = {
        channel: ChannelConsent(
            status=getattr(contact, f"{channel}_consent"),
            unsubscribed=getattr(contact, f"{channel}_unsubscribed"),
            latest_record=(
                ConsentRecordRead.model_validate(records[channel]) if channel in records else None
            ),
        )
        for channel in CONSENT_CHANNELS
    }
    return ContactProfile(
        id=contact.id,
        merged_into=contact.merged_into_id,
        user_id=contact.user_id,
        email=contact.email,
        phone=contact.phone,
        name=display_name(contact.traits or {}),
        is_known=contact.is_known,
        identities=_identities(session, contact.id),
        traits=dict(contact.traits or {}),
        tags=list(contact.tags or []),
        company=CompanyRead.model_validate(company) if company else None,
        timezone=contact.timezone,
        first_seen_at=contact.first_seen_at,
        last_seen_at=contact.last_seen_at,
        first_touch=_touch(contact, "first_touch"),
        latest_touch=_touch(contact, "last_touch"),
        page_views=contact.page_views or 0,
        event_counts=dict(contact.event_counts or {}),
        lifecycle_stage=contact.lifecycle_stage,
        consent=consent,
        unsubscribed=contact.email_unsubscribed and contact.sms_unsubscribed,
        suppressed=contact.suppressed,
        created_at=contact.created_at,
        updated_at=contact.updated_at,
    )


def get_profile(session: Session, contact_id: uuid.UUID) -> ContactProfile:
    return profile(session, get_contact(session, contact_id))


# Timeline


def timeline(
    session: Session, contact_id: uuid.UUID, limit: int, cursor: str | None
) -> TimelinePage:
    get_contact(session, contact_id)
    after: ColumnElement[bool] = true()
    if cursor:
        timestamp, event_id = _event_cursor(cursor)
        after = or_(
            Event.timestamp < timestamp, and_(Event.timestamp == timestamp, Event.id < event_id)
        )
    rows = list(
        session.scalars(
            select(Event)
            .where(Event.contact_id == contact_id, after)
            .order_by(Event.timestamp.desc(), Event.id.desc())
            .limit(limit + 1)
        )
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].timestamp.isoformat(), rows[-1].id)
    return TimelinePage(items=[timeline_event(e) for e in rows], next_cursor=next_cursor)


def timeline_event(event: Event) -> TimelineEvent:
    return TimelineEvent(
        id=event.id,
        type=event.type,
        name=event.name,
        timestamp=event.timestamp,
        properties=dict(event.properties or {}),
        url=event.url,
        path=event.path,
        referrer=event.referrer,
        channel=event.channel,
        device=DeviceRead(type=event.device_type, os=event.os, browser=event.browser),
        visit_id=event.visit_id,
    )


# Edits


def _merged_conflict(contact: Contact) -> ApiError:
    return ApiError(
        409,
        "contact_merged",
        f"contact {contact.id} was merged into {contact.merged_into_id}; change that one",
    )


def update_contact(
    session: Session, contact_id: uuid.UUID, changes: ContactUpdate, api_key_id: uuid.UUID
) -> ContactProfile:
    """Applies trait and tag edits and publishes what changed (old and new values)."""
    contact = get_contact(session, contact_id, for_update=True)
    if contact.merged_into_id is not None:
        raise _merged_conflict(contact)
    old_traits = dict(contact.traits or {})
    new_traits = dict(old_traits)
    for key, value in (changes.traits or {}).items():
        if value is None:
            new_traits.pop(key, None)
        else:
            new_traits[key] = value
    changed = sorted(
        k
        for k in old_traits.keys() | new_traits.keys()
        if old_traits.get(k, _ABSENT) != new_traits.get(k, _ABSENT)
    )

    old_tags = list(contact.tags or [])
    new_tags = _new_tags(old_tags, changes)

    # Same shape as ingest's trait changes, so subscribers read one format.
    payload: dict[str, Any] = {"api_key_id": str(api_key_id)}
    if changed:
        contact.traits = new_traits
        payload["changed"] = {
            k: {"old": old_traits.get(k), "new": new_traits.get(k)} for k in changed
        }
    if new_tags != old_tags:
        contact.tags = new_tags
        payload["tags"] = {"old": old_tags, "new": new_tags}
    if changed or new_tags != old_tags:
        contact.updated_at = clock.now()
        session.flush()
        feed.publish(session, [feed.Change(feed.TRAITS_CHANGED, contact.id, payload)])
    return profile(session, contact)


def _new_tags(old_tags: Sequence[str], changes: ContactUpdate) -> list[str]:
    if changes.tags is not None:
        return list(dict.fromkeys(changes.tags))
    removed = set(changes.remove_tags or [])
    kept = [t for t in old_tags if t not in removed]
    return list(dict.fromkeys([*kept, *(t for t in changes.add_tags or [] if t not in removed)]))


def merge_into(session: Session, into_id: uuid.UUID, from_id: uuid.UUID) -> ContactProfile:
    """Explicit merge of two contacts: all of `from`'s history moves to `into`."""
    if into_id == from_id:
        raise ApiError(
            422,
            "invalid",
            "a contact cannot be merged into itself",
            {"from_contact_id": "must be a different contact than the one in the path"},
        )
    contacts = {
        c.id: c for c in session.scalars(select(Contact).where(Contact.id.in_([into_id, from_id])))
    }
    if into_id not in contacts:
        raise not_found(into_id)
    if from_id not in contacts:
        raise ApiError(
            422,
            "invalid",
            f"contact {from_id} does not exist",
            {"from_contact_id": "no contact has this id"},
        )
    for field, contact in (
        ("contact_id", contacts[into_id]),
        ("from_contact_id", contacts[from_id]),
    ):
        if contact.merged_into_id is not None:
            raise ApiError(
                422,
                "invalid",
                f"contact {contact.id} was already merged into {contact.merged_into_id}",
                {field: "was already merged into another contact"},
            )
    try:
        survivor = merge.merge_contacts(session, into_id, from_id)
    except (LookupError, ValueError) as exc:
        # Another request changed one of the two between our check and the merge's lock.
        raise ApiError(409, "conflict", str(exc)) from exc
    session.flush()
    return profile(session, survivor)


# PIPL: access and erasure


def export_contact(session: Session, contact_id: uuid.UUID) -> ContactExport:
    contact = get_contact(session, contact_id)
    events = session.scalars(
        select(Event).where(Event.contact_id == contact_id).order_by(Event.timestamp, Event.id)
    )
    visits = session.scalars(
        select(Visit).where(Visit.contact_id == contact_id).order_by(Visit.started_at)
    )
    consent_records = session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.contact_id == contact_id)
        .order_by(ConsentRecord.recorded_at, ConsentRecord.id)
    )
    submissions = session.scalars(
        select(FormSubmission)
        .where(FormSubmission.contact_id == contact_id)
        .order_by(FormSubmission.created_at, FormSubmission.id)
    )
    merged = session.scalars(
        select(Contact).where(Contact.id.in_(_merged_into(session, contact_id)))
    )
    contact_profile = profile(session, contact)
    return ContactExport(
        exported_at=clock.now(),
        profile=contact_profile,
        identities=contact_profile.identities,
        events=[ExportedEvent.model_validate(e) for e in events],
        visits=[VisitRead.model_validate(v) for v in visits],
        consent_records=[ConsentRecordRead.model_validate(r) for r in consent_records],
        form_submissions=[FormSubmissionRead.model_validate(s) for s in submissions],
        merged_contacts=[MergedContactRead.model_validate(m) for m in merged],
    )


def _merged_into(session: Session, contact_id: uuid.UUID) -> list[uuid.UUID]:
    """Every contact merged (directly or through another) into this one."""
    found: list[uuid.UUID] = []
    frontier = [contact_id]
    while frontier:
        frontier = list(
            session.scalars(select(Contact.id).where(Contact.merged_into_id.in_(frontier)))
        )
        found += frontier
    return found


def delete_contact(session: Session, contact_id: uuid.UUID, api_key_id: uuid.UUID) -> None:
    """Erases the person: the contact, the contacts merged into it, their identities, events,
    visits and consent records; form submissions stay only as anonymous counts."""
    get_contact(session, contact_id)
    ids = [contact_id, *_merged_into(session, contact_id)]
    session.execute(delete(Event).where(Event.contact_id.in_(ids)))
    session.execute(delete(Visit).where(Visit.contact_id.in_(ids)))
    session.execute(delete(Identity).where(Identity.contact_id.in_(ids)))
    session.execute(delete(ConsentRecord).where(ConsentRecord.contact_id.in_(ids)))
    session.execute(
        update(FormSubmission)
        .where(FormSubmission.contact_id.in_(ids))
        .values(
            contact_id=None, data={}, anonymous_id=None, ip=None, page_url=None, user_agent=None
        )
    )
    # Earlier change records carry trait values, which are personal information too.
    session.execute(delete(feed.ChangeRecord).where(feed.ChangeRecord.contact_id.in_(ids)))
    session.execute(update(Contact).where(Contact.id.in_(ids)).values(merged_into_id=None))
    session.execute(delete(Contact).where(Contact.id.in_(ids)))
    # The one trace kept: which key erased which id, and when (no personal information), and
    # the signal for other domains to drop what they hold about the person.
    feed.publish(
        session,
        [
            feed.Change(
                CONTACT_DELETED,
                contact_id,
                {"api_key_id": str(api_key_id), "merged_contact_ids": [str(i) for i in ids[1:]]},
            )
        ],
    )
    session.flush()
