"""Journeys' business logic: drafts, the draft → published → paused → archived lifecycle with
frozen versions, manual enrollment, stats, and the change-feed reaction that starts event and
segment triggers and wakes contacts waiting for an event."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.models import Contact, Event
from core import feed
from core.clock import clock
from journeys import engine, segments, triggers
from journeys.definition import DefinitionError, nodes_by_id, validate
from journeys.dry_run import dry_run as run_dry
from journeys.models import (
    RUNNING,
    Enrollment,
    EnrollmentStep,
    Journey,
    JourneyTrigger,
    JourneyVersion,
    SegmentMember,
)
from journeys.segments import get_segment
from scoring import scorer

FEED_CONSUMER = "journeys.triggers"


def invalid(fields: dict[str, str]) -> ApiError:
    message = "invalid journey: " + "; ".join(f"{k} {v}" for k, v in fields.items())
    return ApiError(422, "invalid", message, fields)


def conflict(field: str, message: str) -> ApiError:
    """A request the journey's current state refuses (publishing while paused, enrolling a
    contact twice): 422 like any bad input, naming the field the refusal is about."""
    return ApiError(422, "invalid", message, {field: message})


def get_journey(session: Session, journey_id: uuid.UUID) -> Journey:
    journey = session.get(Journey, journey_id)
    if journey is None:
        raise ApiError(404, "not_found", f"journey {journey_id} does not exist")
    return journey


def list_journeys(session: Session) -> list[Journey]:
    return list(session.scalars(select(Journey).order_by(Journey.created_at, Journey.id)))


def check_definition(session: Session, definition: Any) -> dict[str, Any]:
    try:
        return validate(session, definition)
    except DefinitionError as error:
        raise invalid(error.fields) from None


def create_journey(session: Session, name: str, definition: dict[str, Any]) -> Journey:
    """A new journey is a draft; its definition is checked in full only when published."""
    journey = Journey(name=name, status="draft", draft=definition)
    session.add(journey)
    session.flush()
    return journey


def update_draft(
    session: Session, journey_id: uuid.UUID, name: str | None, definition: dict[str, Any] | None
) -> Journey:
    """Edits the draft; contacts in flight keep running the published version."""
    journey = get_journey(session, journey_id)
    if journey.status == "archived":
        raise conflict("status", "an archived journey cannot be edited")
    if name is not None:
        journey.name = name
    if definition is not None:
        journey.draft = definition
    session.flush()
    return journey


def publish(session: Session, journey_id: uuid.UUID) -> JourneyVersion:
    """Freezes the draft as the next version and makes it the one new contacts enter."""
    journey = get_journey(session, journey_id)
    if journey.status not in ("draft", "published"):
        raise conflict("status", f"a {journey.status} journey cannot be published; resume it first")
    definition = check_definition(session, journey.draft)
    number = (
        session.scalar(
            select(func.max(JourneyVersion.number)).where(JourneyVersion.journey_id == journey.id)
        )
        or 0
    ) + 1
    version = JourneyVersion(journey_id=journey.id, number=number, definition=definition)
    session.add(version)
    session.flush()
    journey.live_version_id = version.id
    journey.status = "published"
    session.execute(delete(JourneyTrigger).where(JourneyTrigger.journey_id == journey.id))
    trigger = definition["trigger"]
    if trigger["type"] != "manual":
        session.add(
            JourneyTrigger(
                journey_id=journey.id,
                kind=trigger["type"],
                event_name=trigger.get("event"),
                segment_id=uuid.UUID(trigger["segment_id"]) if "segment_id" in trigger else None,
            )
        )
    session.flush()
    return version


def pause(session: Session, journey_id: uuid.UUID) -> Journey:
    """Stops entries and steps; waiting contacts stay where they are."""
    journey = get_journey(session, journey_id)
    if journey.status != "published":
        raise conflict(
            "status", f"only a published journey can be paused, not a {journey.status} one"
        )
    journey.status = "paused"
    session.flush()
    return journey


def resume(session: Session, journey_id: uuid.UUID) -> Journey:
    journey = get_journey(session, journey_id)
    if journey.status != "paused":
        raise conflict(
            "status", f"only a paused journey can be resumed, not a {journey.status} one"
        )
    journey.status = "published"
    session.flush()
    return journey


def archive(session: Session, journey_id: uuid.UUID) -> Journey:
    """Ends the journey: running enrollments exit, triggers stop."""
    journey = get_journey(session, journey_id)
    if journey.status == "archived":
        raise conflict("status", "the journey is archived already")
    journey.status = "archived"
    session.execute(delete(JourneyTrigger).where(JourneyTrigger.journey_id == journey.id))
    now = clock.now()
    session.execute(
        update(Enrollment)
        .where(Enrollment.journey_id == journey.id, Enrollment.status.in_(RUNNING))
        .values(
            status="exited",
            outcome="journey archived",
            finished_at=now,
            next_run_at=None,
            wake_at=None,
            waiting_since=None,
            waiting_for_event=None,
        )
    )
    session.flush()
    return journey


def migrate_enrollments(session: Session, journey_id: uuid.UUID) -> tuple[int, int]:
    """Moves running enrollments onto the live version when their current node exists there;
    returns (moved, left on their old version)."""
    journey = get_journey(session, journey_id)
    if journey.live_version_id is None:
        raise conflict("version", "the journey has no published version")
    live = session.get(JourneyVersion, journey.live_version_id)
    assert live is not None
    older = (
        Enrollment.journey_id == journey.id,
        Enrollment.status.in_(RUNNING),
        Enrollment.version_id != live.id,
    )
    moved = len(
        session.scalars(
            update(Enrollment)
            .where(*older, Enrollment.current_node.in_(list(nodes_by_id(live.definition))))
            .values(version_id=live.id)
            .returning(Enrollment.id)
        ).all()
    )
    left = session.scalar(select(func.count()).select_from(Enrollment).where(*older)) or 0
    return moved, left


def enroll_contact(session: Session, journey_id: uuid.UUID, contact_id: uuid.UUID) -> Enrollment:
    """Manual or API enrollment of one contact; refused if it cannot enter now."""
    journey = get_journey(session, journey_id)
    if journey.status != "published":
        raise conflict("status", f"a {journey.status} journey takes no enrollments")
    contact = session.get(Contact, contact_id)
    if contact is None or contact.merged_into_id is not None:
        raise invalid({"contact_id": f"contact {contact_id} does not exist"})
    running = session.scalar(
        select(Enrollment.id).where(
            Enrollment.journey_id == journey_id,
            Enrollment.contact_id == contact_id,
            Enrollment.status.in_(RUNNING),
        )
    )
    if running is not None:
        raise conflict(
            "contact_id", f"contact {contact_id} is already in this journey (enrollment {running})"
        )
    if not engine.enroll(session, journey, [contact_id]):
        raise conflict(
            "contact_id", f"the journey's re-entry rule keeps contact {contact_id} out for now"
        )
    enrollment = session.scalar(
        select(Enrollment).where(
            Enrollment.journey_id == journey_id,
            Enrollment.contact_id == contact_id,
            Enrollment.status.in_(RUNNING),
        )
    )
    assert enrollment is not None
    return enrollment


def enroll_segment(session: Session, journey_id: uuid.UUID, segment_id: uuid.UUID) -> int:
    """Enrolls every current member of a segment (re-entry rules apply); returns how many."""
    journey = get_journey(session, journey_id)
    if journey.status != "published":
        raise conflict("status", f"a {journey.status} journey takes no enrollments")
    get_segment(session, segment_id)
    members = session.scalars(
        select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment_id)
    )
    return len(engine.enroll(session, journey, list(members)))


def get_enrollment(session: Session, journey_id: uuid.UUID, enrollment_id: uuid.UUID) -> Enrollment:
    enrollment = session.get(Enrollment, enrollment_id)
    if enrollment is None or enrollment.journey_id != journey_id:
        raise ApiError(404, "not_found", f"enrollment {enrollment_id} does not exist")
    return enrollment


def list_versions(session: Session, journey_id: uuid.UUID) -> list[JourneyVersion]:
    get_journey(session, journey_id)
    return list(
        session.scalars(
            select(JourneyVersion)
            .where(JourneyVersion.journey_id == journey_id)
            .order_by(JourneyVersion.number)
        )
    )


def dry_run(
    session: Session,
    journey_id: uuid.UUID,
    contact_id: uuid.UUID | None,
    made_up: dict[str, Any] | None,
) -> dict[str, Any]:
    """How a contact (real, or made up from traits and events) would enter the journey's
    draft and the path it would take, and why; nothing is changed or sent."""
    journey = get_journey(session, journey_id)
    definition = check_definition(session, journey.draft)
    if contact_id is not None and session.get(Contact, contact_id) is None:
        raise invalid({"contact_id": f"contact {contact_id} does not exist"})
    return run_dry(session, journey, definition, contact_id, made_up)


def enrollment_steps(session: Session, enrollment_id: uuid.UUID) -> list[EnrollmentStep]:
    return list(
        session.scalars(
            select(EnrollmentStep)
            .where(EnrollmentStep.enrollment_id == enrollment_id)
            .order_by(EnrollmentStep.id)
        )
    )


def stats(session: Session, journey_id: uuid.UUID) -> dict[str, Any]:
    """Per journey: enrolled, active, converted, exited, failed, conversion rate; per node of
    the live version: entered, waiting, completed, failed, and split/branch counts."""
    journey = get_journey(session, journey_id)
    by_status = dict(
        session.execute(
            select(Enrollment.status, func.count())
            .where(Enrollment.journey_id == journey.id)
            .group_by(Enrollment.status)
        ).all()
    )
    enrolled = sum(by_status.values())
    steps = session.execute(
        select(EnrollmentStep.node_id, EnrollmentStep.result, func.count())
        .where(EnrollmentStep.journey_id == journey.id)
        .group_by(EnrollmentStep.node_id, EnrollmentStep.result)
    ).all()
    waiting = dict(
        session.execute(
            select(Enrollment.current_node, func.count())
            .where(Enrollment.journey_id == journey.id, Enrollment.status == "waiting")
            .group_by(Enrollment.current_node)
        ).all()
    )
    branch = EnrollmentStep.detail["branch"].as_string()
    branches = session.execute(
        select(EnrollmentStep.node_id, branch, func.count())
        .where(EnrollmentStep.journey_id == journey.id, branch.is_not(None))
        .group_by(EnrollmentStep.node_id, branch)
    ).all()
    live = session.get(JourneyVersion, journey.live_version_id) if journey.live_version_id else None
    node_ids = set(nodes_by_id(live.definition)) if live is not None else set()
    nodes: dict[str, dict[str, Any]] = {}

    def node(node_id: str) -> dict[str, Any]:
        return nodes.setdefault(
            node_id, {"entered": 0, "waiting": 0, "completed": 0, "failed": 0, "branches": {}}
        )

    for node_id in node_ids:
        node(node_id)
    for node_id, result, count in steps:
        if result in ("done", "skipped"):
            node(node_id)["completed"] += count
        elif result == "failed":
            node(node_id)["failed"] += count
    for node_id, count in waiting.items():
        node(node_id)["waiting"] = count
    for node_id, name, count in branches:
        node(node_id)["branches"][name] = count
    for counts in nodes.values():
        counts["entered"] = counts["completed"] + counts["failed"] + counts["waiting"]
    converted = by_status.get("converted", 0)
    return {
        "enrolled": enrolled,
        "active": by_status.get("active", 0) + by_status.get("waiting", 0),
        "converted": converted,
        "completed": by_status.get("completed", 0),
        "exited": by_status.get("exited", 0),
        "failed": by_status.get("failed", 0),
        "conversion_rate": round(converted / enrolled, 4) if enrolled else 0.0,
        "nodes": nodes,
    }


def handle_changes(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    """Starts event and segment-entry triggers and wakes waiting contacts whose event (by
    name or call type) came or whose goal may be met, in one pass per batch: triggers are
    looked up by event name or call type."""
    event_ids: dict[str, list[int]] = {}
    _wake_for_goals(session, {record.contact_id for record in records})
    for record in records:
        if record.kind == feed.EVENT_STORED:
            for key in engine.awaited_by(record.payload.get("name"), record.payload.get("type")):
                event_ids.setdefault(key, []).append(int(record.payload["event_id"]))
    if event_ids:
        _wake_waiting(session, event_ids)
    triggers.start_journeys(session, records)


def _wake_for_goals(session: Session, contact_ids: set[uuid.UUID]) -> None:
    """Contacts that changed while waiting in a journey with a goal are looked at now, so
    that meeting the goal ends the wait (the engine checks the goal before anything else)."""
    waiting = (Enrollment.status == "waiting", Enrollment.contact_id.in_(contact_ids))
    version_ids = set(session.scalars(select(Enrollment.version_id).where(*waiting).distinct()))
    if not version_ids:
        return
    with_goal = [
        version.id
        for version in session.scalars(
            select(JourneyVersion).where(JourneyVersion.id.in_(version_ids))
        )
        if version.definition.get("goal") is not None
    ]
    if with_goal:
        session.execute(
            update(Enrollment)
            .where(*waiting, Enrollment.version_id.in_(with_goal))
            .values(next_run_at=clock.now())
        )


def _wake_waiting(session: Session, event_ids: dict[str, list[int]]) -> None:
    contacts = select(Event.contact_id).where(
        Event.id.in_({i for ids in event_ids.values() for i in ids})
    )
    session.execute(
        update(Enrollment)
        .where(
            Enrollment.status == "waiting",
            Enrollment.waiting_for_event.in_(list(event_ids)),
            Enrollment.contact_id.in_(contacts),
        )
        .values(next_run_at=clock.now())
    )


def subscribe() -> None:
    # After segments (their entries and exits are triggers) and scoring (trigger conditions
    # may test scores).
    feed.subscribe(
        FEED_CONSUMER, handle_changes, after=[scorer.FEED_CONSUMER, segments.FEED_CONSUMER]
    )
