"""Admin API for contacts and sources (`/api/v1`), authenticated by an admin API key."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from api.deps import AdminKey, MarketerKey, RequireRole, SessionDep
from capture import contacts, source_admin
from capture.models import Source
from capture.schemas import (
    ContactExport,
    ContactPage,
    ContactProfile,
    ContactUpdate,
    MergeRequest,
    PlainText,
    SourceCreate,
    SourceRead,
    SourceUpdate,
    SourceWithKey,
    TimelinePage,
)
from capture.sources import create_source
from core.keys import ApiKey, Role

router = APIRouter(prefix="/api/v1")

# Reps will see their own leads once handoff assigns them; until then they see no contacts.
ContactReader = Annotated[ApiKey, Depends(RequireRole(Role.marketer, Role.manager))]
Limit = Annotated[int, Query(ge=1, le=200, description="page size, at most 200")]
Cursor = Annotated[
    str | None, Query(max_length=500, description="`next_cursor` from the previous page")
]
TextFilter = Annotated[PlainText | None, Query(max_length=320)]

MERGED_NOTE = (
    "A merged contact still answers 200: its `merged_into` names the contact that holds its "
    "history now. Unknown ids answer 404."
)


@router.get("/contacts", tags=["contacts"])
def list_contacts(
    session: SessionDep,
    _key: ContactReader,
    email: TextFilter = None,
    phone: TextFilter = None,
    user_id: TextFilter = None,
    q: Annotated[
        PlainText | None,
        Query(max_length=200, description="text in an email, phone, user id or name"),
    ] = None,
    lifecycle_stage: Annotated[PlainText | None, Query(max_length=32)] = None,
    tag: Annotated[PlainText | None, Query(max_length=100)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> ContactPage:
    """Contacts, most recently seen first; contacts merged into another are left out.

    `email` and `phone` are normalised the way capture normalises them (lower-case address,
    E.164 number) and must be valid."""
    filters = contacts.ContactFilters(
        email=email,
        phone=phone,
        user_id=user_id,
        q=q.strip() if q else None,
        lifecycle_stage=lifecycle_stage,
        tag=tag,
    )
    return contacts.list_contacts(session, filters, limit, cursor)


@router.get(
    "/contacts/{contact_id}",
    tags=["contacts"],
    description="The whole profile of one contact. " + MERGED_NOTE,
)
def get_contact(contact_id: uuid.UUID, session: SessionDep, _key: ContactReader) -> ContactProfile:
    return contacts.get_profile(session, contact_id)


@router.get("/contacts/{contact_id}/timeline", tags=["contacts"])
def get_timeline(
    contact_id: uuid.UUID,
    session: SessionDep,
    _key: ContactReader,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> TimelinePage:
    """The contact's events, newest first."""
    return contacts.timeline(session, contact_id, limit, cursor)


@router.patch("/contacts/{contact_id}", tags=["contacts"])
def update_contact(
    contact_id: uuid.UUID, changes: ContactUpdate, session: SessionDep, key: MarketerKey
) -> ContactProfile:
    """Edits traits (merged in; `null` removes one) and tags. A merged contact answers 409."""
    return contacts.update_contact(session, contact_id, changes, key.id)


@router.post("/contacts/{contact_id}/merge", tags=["contacts"])
def merge_contact(
    contact_id: uuid.UUID, body: MergeRequest, session: SessionDep, _key: MarketerKey
) -> ContactProfile:
    """Merges `from_contact_id` into this contact: its identities, events, visits, consent
    records and form submissions move here, and it keeps a pointer (`merged_into`)."""
    return contacts.merge_into(session, contact_id, body.from_contact_id)


@router.get("/contacts/{contact_id}/export", tags=["contacts"])
def export_contact(
    contact_id: uuid.UUID, session: SessionDep, _key: ContactReader
) -> ContactExport:
    """Everything stored about this person, for a PIPL access request."""
    return contacts.export_contact(session, contact_id)


@router.delete("/contacts/{contact_id}", tags=["contacts"], status_code=204)
def delete_contact(contact_id: uuid.UUID, session: SessionDep, key: MarketerKey) -> Response:
    """Erases the person (PIPL): the contact and any contacts merged into it, with their
    identities, events, visits and consent records; their form submissions keep no data."""
    contacts.delete_contact(session, contact_id, key.id)
    return Response(status_code=204)


def with_key(source: Source, write_key: str) -> SourceWithKey:
    return SourceWithKey(**SourceRead.model_validate(source).model_dump(), write_key=write_key)


@router.post("/sources", tags=["sources"], status_code=201)
def create(body: SourceCreate, session: SessionDep, _key: AdminKey) -> SourceWithKey:
    """Creates a source; the response holds its write key, which is never shown again."""
    source, write_key = create_source(
        session, body.name, body.allowed_origins, body.honor_do_not_track
    )
    return with_key(source, write_key)


@router.get("/sources", tags=["sources"])
def list_sources(session: SessionDep, _key: AdminKey) -> list[SourceRead]:
    return [SourceRead.model_validate(s) for s in source_admin.list_sources(session)]


@router.get("/sources/{source_id}", tags=["sources"])
def get_source(source_id: uuid.UUID, session: SessionDep, _key: AdminKey) -> SourceRead:
    return SourceRead.model_validate(source_admin.get_source(session, source_id))


@router.patch("/sources/{source_id}", tags=["sources"])
def update_source(
    source_id: uuid.UUID, changes: SourceUpdate, session: SessionDep, _key: AdminKey
) -> SourceRead:
    return SourceRead.model_validate(source_admin.update_source(session, source_id, changes))


@router.post("/sources/{source_id}/rotate-key", tags=["sources"])
def rotate_key(source_id: uuid.UUID, session: SessionDep, _key: AdminKey) -> SourceWithKey:
    """Issues a new write key (shown once); the old key stops working within 30 seconds."""
    source, write_key = source_admin.rotate_write_key(session, source_id)
    return with_key(source, write_key)


@router.delete("/sources/{source_id}", tags=["sources"], status_code=204)
def disable_source(source_id: uuid.UUID, session: SessionDep, _key: AdminKey) -> Response:
    """Disables the source: its write key stops capturing; captured data stays."""
    source_admin.disable_source(session, source_id)
    return Response(status_code=204)
