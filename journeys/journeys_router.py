"""Journeys HTTP under /api/v1/journeys: drafts, validation, the publish/pause/resume/archive
lifecycle, versions, manual enrollment, enrollments with their steps, and stats. Marketers
only."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from api.deps import MarketerKey, SessionDep
from journeys import service
from journeys.schemas import (
    DefinitionCheck,
    DryRunRequest,
    EnrollmentRead,
    EnrollRequest,
    JourneyCreate,
    JourneyRead,
    JourneyUpdate,
    SegmentEnrollRead,
    StepRead,
    VersionRead,
)

router = APIRouter(prefix="/api/v1/journeys", tags=["journeys"])


@router.post("", response_model=JourneyRead, status_code=201)
def create_journey(body: JourneyCreate, session: SessionDep, _key: MarketerKey) -> object:
    """Creates a draft; it is validated in full when published."""
    return service.create_journey(session, body.name, body.definition)


@router.get("", response_model=list[JourneyRead])
def list_journeys(session: SessionDep, _key: MarketerKey) -> object:
    return service.list_journeys(session)


@router.post("/validate")
def validate_definition(
    body: DefinitionCheck, session: SessionDep, _key: MarketerKey
) -> dict[str, bool]:
    """Checks a definition; problems are a 422 naming each node and field."""
    service.check_definition(session, body.definition)
    return {"valid": True}


@router.get("/{journey_id}", response_model=JourneyRead)
def get_journey(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    return service.get_journey(session, journey_id)


@router.put("/{journey_id}", response_model=JourneyRead)
def update_journey(
    journey_id: uuid.UUID, body: JourneyUpdate, session: SessionDep, _key: MarketerKey
) -> object:
    """Edits the draft; publish it to make a new version. Contacts in flight stay put."""
    return service.update_draft(session, journey_id, body.name, body.definition)


@router.post("/{journey_id}/publish", response_model=VersionRead, status_code=201)
def publish(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    return service.publish(session, journey_id)


@router.post("/{journey_id}/pause", response_model=JourneyRead)
def pause(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    return service.pause(session, journey_id)


@router.post("/{journey_id}/resume", response_model=JourneyRead)
def resume(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    return service.resume(session, journey_id)


@router.post("/{journey_id}/archive", response_model=JourneyRead)
def archive(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    return service.archive(session, journey_id)


@router.post("/{journey_id}/migrate")
def migrate(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> dict[str, int]:
    """Moves contacts in flight onto the live version where their current node still exists."""
    moved, left = service.migrate_enrollments(session, journey_id)
    return {"migrated": moved, "left_on_old_version": left}


@router.get("/{journey_id}/versions", response_model=list[VersionRead])
def versions(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    return service.list_versions(session, journey_id)


@router.post("/{journey_id}/enrollments", status_code=201)
def enroll(
    journey_id: uuid.UUID, body: EnrollRequest, session: SessionDep, _key: MarketerKey
) -> Any:
    """Enrolls one contact (`contact_id`) or every member of a segment (`segment_id`)."""
    if (body.contact_id is None) == (body.segment_id is None):
        raise service.invalid({"contact_id": "give exactly one of contact_id and segment_id"})
    if body.segment_id is not None:
        count = service.enroll_segment(session, journey_id, body.segment_id)
        return SegmentEnrollRead(enrolled=count)
    assert body.contact_id is not None
    enrollment = service.enroll_contact(session, journey_id, body.contact_id)
    return EnrollmentRead.model_validate(enrollment)


@router.get("/{journey_id}/enrollments/{enrollment_id}", response_model=EnrollmentRead)
def get_enrollment(
    journey_id: uuid.UUID, enrollment_id: uuid.UUID, session: SessionDep, _key: MarketerKey
) -> object:
    """An enrollment with its step history: where it went and why."""
    enrollment = service.get_enrollment(session, journey_id, enrollment_id)
    read = EnrollmentRead.model_validate(enrollment)
    read.steps = [
        StepRead.model_validate(step) for step in service.enrollment_steps(session, enrollment.id)
    ]
    return read


@router.get("/{journey_id}/stats")
def stats(journey_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> dict[str, Any]:
    return service.stats(session, journey_id)


@router.post("/{journey_id}/dry-run")
def dry_run(
    journey_id: uuid.UUID, body: DryRunRequest, session: SessionDep, _key: MarketerKey
) -> dict[str, Any]:
    """How a real contact (`contact_id`) or a made-up one (`contact`: traits, events) would
    enter the draft (`entry`) and the path it would take (`path`), node by node with the
    reason; nothing is changed or sent."""
    if (body.contact_id is None) == (body.contact is None):
        raise service.invalid({"contact_id": "give exactly one of contact_id and contact"})
    made_up = body.contact.model_dump() if body.contact is not None else None
    return service.dry_run(session, journey_id, body.contact_id, made_up)
