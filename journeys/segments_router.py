"""Segments HTTP under /api/v1/segments: create, validate, preview, members, history,
rebuild and CSV import. Marketers only."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from api.deps import MarketerKey, SessionDep
from api.errors import ApiError
from journeys import segments
from journeys.conditions import segment_ids
from journeys.models import Segment
from journeys.schemas import (
    ChangeRead,
    ConditionCheck,
    ConditionValid,
    ContactSample,
    HistoryPage,
    ImportRead,
    MemberRead,
    MembersPage,
    PreviewRead,
    PreviewRequest,
    RebuildRead,
    SegmentCreate,
    SegmentRead,
)

router = APIRouter(prefix="/api/v1/segments", tags=["segments"])
MAX_CSV_BYTES = 10_000_000
PageSize = Annotated[int, Query(ge=1, le=1000)]


def _read(session: SessionDep, segment: Segment) -> SegmentRead:
    read = SegmentRead.model_validate(segment)
    read.member_count = segments.member_count(session, segment.id)
    return read


@router.post("", response_model=SegmentRead, status_code=201)
def create_segment(body: SegmentCreate, session: SessionDep, _key: MarketerKey) -> SegmentRead:
    """Creates a segment; a dynamic one is filled from its condition straight away."""
    segment = segments.create_segment(session, body.name, body.kind, body.condition)
    return _read(session, segment)


@router.get("", response_model=list[SegmentRead])
def list_segments(session: SessionDep, _key: MarketerKey) -> list[SegmentRead]:
    return [_read(session, segment) for segment in segments.list_segments(session)]


@router.post("/validate", response_model=ConditionValid)
def validate_condition(body: ConditionCheck, session: SessionDep, _key: MarketerKey) -> object:
    """Checks a condition; a bad one is a 422 naming the path of the problem."""
    node = segments.check_condition(session, body.condition)
    return ConditionValid(valid=True, referenced_segments=sorted(segment_ids(node), key=str))


@router.post("/preview", response_model=PreviewRead)
def preview(body: PreviewRequest, session: SessionDep, _key: MarketerKey) -> object:
    """How many contacts a condition selects now, with a sample; nothing is stored."""
    count, sample = segments.preview(session, body.condition, body.sample_size)
    return PreviewRead(count=count, sample=[ContactSample.model_validate(c) for c in sample])


@router.get("/{segment_id}", response_model=SegmentRead)
def get_segment(segment_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> SegmentRead:
    return _read(session, segments.get_segment(session, segment_id))


@router.delete("/{segment_id}", status_code=204)
def delete_segment(segment_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> Response:
    segments.delete_segment(session, segment_id)
    return Response(status_code=204)


@router.get("/{segment_id}/members", response_model=MembersPage)
def members(
    segment_id: uuid.UUID,
    session: SessionDep,
    _key: MarketerKey,
    after: uuid.UUID | None = None,
    limit: PageSize = 100,
) -> object:
    """Members ordered by contact id; pass `next_after` back as `after` for the next page."""
    rows = segments.members_page(session, segment_id, after, limit)
    items = [
        MemberRead(
            contact_id=r.contact_id, email=r.email, user_id=r.user_id, entered_at=r.entered_at
        )
        for r in rows
    ]
    return MembersPage(
        items=items, next_after=items[-1].contact_id if len(items) == limit else None
    )


@router.get("/{segment_id}/history", response_model=HistoryPage)
def history(
    segment_id: uuid.UUID,
    session: SessionDep,
    _key: MarketerKey,
    after: Annotated[int | None, Query(ge=0)] = None,
    limit: PageSize = 100,
) -> object:
    """Entries and exits, oldest first."""
    rows = segments.history_page(session, segment_id, after, limit)
    items = [ChangeRead.model_validate(r) for r in rows]
    return HistoryPage(items=items, next_after=items[-1].id if len(items) == limit else None)


@router.post("/{segment_id}/rebuild", response_model=RebuildRead)
def rebuild(segment_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    """Re-evaluates a dynamic segment for every contact."""
    segment = segments.get_segment(session, segment_id)
    if segment.kind != "dynamic":
        raise segments.invalid({"segment": "only a dynamic segment can be rebuilt"})
    result = segments.refresh(session, segment)
    return RebuildRead(
        entered=len(result.entered),
        left=len(result.left),
        member_count=segments.member_count(session, segment.id),
    )


@router.post("/{segment_id}/import", response_model=ImportRead)
def import_csv(
    segment_id: uuid.UUID,
    session: SessionDep,
    _key: MarketerKey,
    body: Annotated[bytes, Body(media_type="text/csv")],
) -> object:
    """Adds contacts listed in a CSV to a static segment and reports the lines that matched
    nobody."""
    if len(body) > MAX_CSV_BYTES:
        raise ApiError(413, "too_large", f"a CSV may be at most {MAX_CSV_BYTES} bytes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise segments.invalid({"csv": "must be UTF-8 text"}) from None
    report = segments.import_members(session, segment_id, text)
    return ImportRead.model_validate(report, from_attributes=True)
