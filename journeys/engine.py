"""The enrollment state machine: enrolling contacts under the re-entry rules, claiming due
enrollments, and running nodes until a wait or the end. Every step is recorded once under
its idempotency key `enrollment:node:visit`, which also keys the step's side effects."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.models import Contact, Event
from channels import service as channels
from channels.models import Robot
from core import feed
from core.clock import clock
from core.db import dialect_insert, is_postgres
from core.models import table_of
from journeys import segments
from journeys.conditions import Compiler, parse, parse_event_filters
from journeys.definition import duration, nodes_by_id
from journeys.models import RUNNING, Enrollment, EnrollmentStep, Journey, JourneyVersion

DEFAULT_TIMEZONE = "Asia/Shanghai"
# A claimed enrollment whose step was lost (killed worker) is claimed again after this.
CLAIM_LEASE = timedelta(minutes=5)
MAX_STEPS_PER_RUN = 50
ENROLL_BATCH = 1000


class Handoff(Protocol):
    """What the handoff package implements: route a contact to sales, once per key."""

    def __call__(
        self,
        session: Session,
        *,
        contact_id: uuid.UUID,
        journey_id: uuid.UUID,
        enrollment_id: uuid.UUID,
        reason: str | None,
        idempotency_key: str,
    ) -> dict[str, Any]: ...


_handoff: list[Handoff] = []


def register_handoff(handoff: Handoff) -> None:
    """Called by the handoff package at import; until then a handoff node is recorded as
    skipped."""
    _handoff[:] = [handoff]


@dataclass
class StepOutcome:
    result: str
    next_node: str | None
    detail: dict[str, Any]
    wake_at: datetime | None = None


def enroll(session: Session, journey: Journey, contact_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Enrolls contacts in the journey's live version under its re-entry rules; returns the
    contacts that went in. A contact already running in the journey is left where it is."""
    if journey.status != "published" or journey.live_version_id is None:
        return []
    version = session.get(JourneyVersion, journey.live_version_id)
    assert version is not None
    ids = sorted(set(contact_ids))
    entered: list[uuid.UUID] = []
    for start in range(0, len(ids), ENROLL_BATCH):
        entered += _enroll_batch(session, version, ids[start : start + ENROLL_BATCH])
    return entered


def _enroll_batch(
    session: Session, version: JourneyVersion, contact_ids: list[uuid.UUID]
) -> list[uuid.UUID]:
    now = clock.now()
    wanted = set(
        session.scalars(
            select(Contact.id).where(Contact.id.in_(contact_ids), Contact.merged_into_id.is_(None))
        )
    )
    reentry = version.definition.get("reentry") or {"mode": "after_exit"}
    if wanted and reentry["mode"] != "after_exit":
        earlier = select(Enrollment.contact_id).where(
            Enrollment.journey_id == version.journey_id, Enrollment.contact_id.in_(wanted)
        )
        if reentry["mode"] == "every":
            gap = timedelta(hours=reentry.get("min_gap_hours", 0))
            earlier = earlier.where(Enrollment.entered_at > now - gap)
        wanted -= set(session.scalars(earlier))
    if not wanted:
        return []
    rows = [
        {
            "id": uuid.uuid4(),
            "journey_id": version.journey_id,
            "version_id": version.id,
            "contact_id": contact_id,
            "status": "active",
            "current_node": version.definition["start"],
            "next_run_at": now,
            "entered_at": now,
        }
        for contact_id in sorted(wanted)
    ]
    return list(
        session.scalars(
            dialect_insert(session, table_of(Enrollment))
            .values(rows)
            .on_conflict_do_nothing()
            .returning(Enrollment.contact_id)
        )
    )


def claim_due(session: Session, limit: int = 500) -> list[uuid.UUID]:
    """Claims due enrollments of running journeys: concurrent schedulers on PostgreSQL skip
    each other's rows; a claim not finished within the lease is claimed again."""
    now = clock.now()
    due = (
        select(Enrollment.id)
        .join(Journey, Journey.id == Enrollment.journey_id)
        .where(
            Enrollment.status.in_(RUNNING),
            Enrollment.next_run_at <= now,
            Journey.status == "published",
        )
        .order_by(Enrollment.next_run_at)
        .limit(limit)
    )
    if is_postgres(session):
        due = due.with_for_update(of=Enrollment, skip_locked=True)
    ids = list(session.scalars(due))
    if ids:
        session.execute(
            update(Enrollment).where(Enrollment.id.in_(ids)).values(next_run_at=now + CLAIM_LEASE)
        )
    return ids


def run_due(session: Session, limit: int = 500) -> int:
    """Claims and advances due enrollments in this transaction (the embedded scheduler and
    tests); returns how many were advanced."""
    ids = claim_due(session, limit)
    for enrollment_id in ids:
        advance(session, enrollment_id)
    return len(ids)


def advance(session: Session, enrollment_id: uuid.UUID) -> None:
    """Runs an enrollment's nodes from where it stands until it waits or ends."""
    enrollment = session.get(Enrollment, enrollment_id, with_for_update=True)
    if enrollment is None or enrollment.status not in RUNNING:
        return
    version = session.get(JourneyVersion, enrollment.version_id)
    assert version is not None
    definition = version.definition
    nodes = nodes_by_id(definition)
    visits = _visits(session, enrollment.id)
    now = clock.now()
    for _ in range(MAX_STEPS_PER_RUN):
        goal = definition.get("goal")
        if goal is not None and matches(session, enrollment.contact_id, goal):
            _finish(session, enrollment, "converted", "goal met")
            return
        node = nodes.get(enrollment.current_node)
        if node is None:
            _finish(session, enrollment, "failed", f"node {enrollment.current_node} is gone")
            return
        key = _step_key(enrollment, node, visits)
        if enrollment.status == "waiting":
            if not _wait_over(session, enrollment, node, now):
                enrollment.next_run_at = enrollment.wake_at
                return
            outcome = finish_wait(session, enrollment, node)
        else:
            outcome = _run_node(session, enrollment, node, now, key)
        _record(session, enrollment, node["id"], outcome, key)
        if outcome.result == "waiting":
            enrollment.status = "waiting"
            enrollment.waiting_since = now
            enrollment.wake_at = outcome.wake_at
            enrollment.next_run_at = outcome.wake_at
            enrollment.waiting_for_event = (
                node.get("event") if node["type"] == "wait_for_event" else None
            )
            if outcome.wake_at is None or outcome.wake_at > now:
                return
            continue
        visits[node["id"]] += 1
        enrollment.status = "active"
        enrollment.wake_at = enrollment.waiting_since = enrollment.waiting_for_event = None
        if outcome.result == "failed":
            _finish(session, enrollment, "failed", outcome.detail.get("reason"))
            return
        if node["type"] == "exit":
            _finish(session, enrollment, "exited", "exit node")
            return
        if outcome.next_node is None:
            _finish(session, enrollment, "completed", None)
            return
        enrollment.current_node = outcome.next_node
    enrollment.next_run_at = now


def _finish(session: Session, enrollment: Enrollment, status: str, reason: str | None) -> None:
    enrollment.status = status
    enrollment.outcome = reason
    enrollment.finished_at = clock.now()
    enrollment.next_run_at = enrollment.wake_at = enrollment.waiting_since = None
    enrollment.waiting_for_event = None
    session.flush()


def _visits(session: Session, enrollment_id: uuid.UUID) -> Counter[str]:
    """How many times the enrollment has finished each node so far."""
    rows = session.execute(
        select(EnrollmentStep.node_id, func.count())
        .where(EnrollmentStep.enrollment_id == enrollment_id, EnrollmentStep.result != "waiting")
        .group_by(EnrollmentStep.node_id)
    )
    return Counter({node_id: count for node_id, count in rows})


def _step_key(enrollment: Enrollment, node: dict[str, Any], visits: Counter[str]) -> str:
    """`enrollment:node:visit`: the same on a retry of this step, new on a loop's next pass."""
    return f"{enrollment.id}:{node['id']}:{visits[node['id']] + 1}"


def _record(
    session: Session, enrollment: Enrollment, node_id: str, outcome: StepOutcome, key: str
) -> None:
    if outcome.result == "waiting":
        key += ":waiting"
    session.execute(
        dialect_insert(session, table_of(EnrollmentStep))
        .values(
            enrollment_id=enrollment.id,
            journey_id=enrollment.journey_id,
            version_id=enrollment.version_id,
            node_id=node_id,
            idempotency_key=key,
            result=outcome.result,
            detail=outcome.detail,
            at=clock.now(),
        )
        .on_conflict_do_nothing()
    )


def matches(session: Session, contact_id: uuid.UUID, condition: dict[str, Any]) -> bool:
    """Whether one contact meets a condition now (the same SQL segments use)."""
    members = Compiler(clock.now(), is_postgres(session)).members(parse(condition))
    return bool(session.scalar(select(exists(members.where(Contact.id == contact_id)))))


def _run_node(
    session: Session, enrollment: Enrollment, node: dict[str, Any], now: datetime, key: str
) -> StepOutcome:
    kind = node["type"]
    after = node.get("next")
    if kind in ("send_email", "send_sms"):
        channel = "email" if kind == "send_email" else "sms"
        return _send(session, enrollment, node, key, channel, {})
    if kind == "call_webhook":
        return _send(
            session, enrollment, node, key, "webhook", {"endpoint_id": node["endpoint_id"]}
        )
    if kind == "notify_sales":
        robot = session.get(Robot, uuid.UUID(node["robot_id"]))
        channel = robot.kind if robot is not None else "wecom"
        return _send(session, enrollment, node, key, channel, {"robot_id": node["robot_id"]})
    if kind == "update_contact":
        return _update_contact(session, enrollment.contact_id, node)
    if kind == "set_lifecycle_stage":
        contact = session.get(Contact, enrollment.contact_id)
        assert contact is not None
        previous = contact.lifecycle_stage
        contact.lifecycle_stage = node["stage"]
        return StepOutcome("done", after, {"from": previous, "to": node["stage"]})
    if kind == "condition":
        met = matches(session, enrollment.contact_id, node["condition"])
        return StepOutcome(
            "done", node.get("yes" if met else "no"), {"branch": "yes" if met else "no"}
        )
    if kind == "split":
        index = split_branch(enrollment.journey_id, enrollment.contact_id, node)
        branch = node["branches"][index]
        return StepOutcome("done", branch["next"], {"branch": str(index)})
    if kind == "handoff":
        return _hand_off(session, enrollment, node, key)
    if kind in ("add_to_segment", "remove_from_segment"):
        segment_id = uuid.UUID(node["segment_id"])
        change = segments.add_members if kind == "add_to_segment" else segments.remove_members
        moved = change(session, segment_id, [enrollment.contact_id])
        return StepOutcome("done", after, {"changed": bool(moved)})
    if kind == "enroll_in_journey":
        target = session.get(Journey, uuid.UUID(node["journey_id"]))
        entered = target is not None and bool(enroll(session, target, [enrollment.contact_id]))
        return StepOutcome("done", after, {"enrolled": entered})
    if kind == "exit":
        return StepOutcome("done", None, {})
    return StepOutcome("waiting", None, {}, wake_at=wake_time(session, enrollment, node, now))


def wake_time(
    session: Session, enrollment: Enrollment, node: dict[str, Any], now: datetime
) -> datetime:
    kind = node["type"]
    if kind == "wait":
        span = duration(node["duration"], "duration", {})
        assert span is not None
        return now + span
    if kind == "wait_for_event":
        span = duration(node["timeout"], "timeout", {})
        assert span is not None
        return now + span
    if kind == "wait_for_date":
        return date_trait_time(session, enrollment.contact_id, node, now)
    zone_name = session.scalar(select(Contact.timezone).where(Contact.id == enrollment.contact_id))
    return next_time_of_day(now, node["time"], node.get("weekdays"), zone_name)


def date_trait_time(
    session: Session, contact_id: uuid.UUID, node: dict[str, Any], now: datetime
) -> datetime:
    """The contact's date trait plus the offset; now when the trait is missing, unreadable
    or already past (the step history shows which)."""
    traits = session.scalar(select(Contact.traits).where(Contact.id == contact_id)) or {}
    try:
        moment = datetime.fromisoformat(str(traits.get(node["trait"])))
    except ValueError:
        return now
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(now, moment + timedelta(hours=node.get("offset_hours", 0)))


def next_time_of_day(
    now: datetime, time_of_day: str, weekdays: list[int] | None, zone_name: str | None
) -> datetime:
    """The first moment at or after `now` that is `HH:MM` on an allowed ISO weekday in the
    contact's time zone (Asia/Shanghai when unknown or invalid)."""
    try:
        zone = ZoneInfo(zone_name or DEFAULT_TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo(DEFAULT_TIMEZONE)
    hour, minute = (int(part) for part in time_of_day.split(":"))
    local_now = now.astimezone(zone)
    allowed = set(weekdays or range(1, 8))
    for days_ahead in range(8):
        day = (local_now + timedelta(days=days_ahead)).date()
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        if candidate >= local_now and candidate.isoweekday() in allowed:
            return candidate.astimezone(now.tzinfo)
    raise AssertionError("an allowed weekday always comes within a week")


def _wait_over(
    session: Session, enrollment: Enrollment, node: dict[str, Any], now: datetime
) -> bool:
    """Whether a waiting enrollment may move on; a wait for an event that happened moves on
    to the `matched` branch (decided when the node finishes)."""
    if node["type"] == "wait_for_event" and _event_since(session, enrollment, node):
        return True
    return enrollment.wake_at is not None and enrollment.wake_at <= now


def _event_since(session: Session, enrollment: Enrollment, node: dict[str, Any]) -> bool:
    assert enrollment.waiting_since is not None
    compiler = Compiler(clock.now(), is_postgres(session))
    query = select(Event.id).where(
        Event.contact_id == enrollment.contact_id,
        Event.name == node["event"],
        Event.timestamp >= enrollment.waiting_since,
        *compiler.event_filters(parse_event_filters(node.get("where", []), "where")),
    )
    return bool(session.scalar(select(exists(query))))


def finish_wait(session: Session, enrollment: Enrollment, node: dict[str, Any]) -> StepOutcome:
    if node["type"] == "wait_for_event":
        if _event_since(session, enrollment, node):
            return StepOutcome("done", node["matched"], {"branch": "matched"})
        return StepOutcome("done", node["timed_out"], {"branch": "timed_out"})
    return StepOutcome("done", node.get("next"), {})


def split_branch(journey_id: uuid.UUID, contact_id: uuid.UUID, node: dict[str, Any]) -> int:
    """The same contact always lands on the same branch of a split."""
    digest = hashlib.sha256(f"{journey_id}:{node['id']}:{contact_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    cumulative = 0
    for index, branch in enumerate(node["branches"]):
        cumulative += branch["percent"]
        if bucket < cumulative:
            return index
    return len(node["branches"]) - 1


def _send(
    session: Session,
    enrollment: Enrollment,
    node: dict[str, Any],
    key: str,
    channel: str,
    target: dict[str, Any],
) -> StepOutcome:
    try:
        with session.begin_nested():
            delivery = channels.send(
                session,
                contact_id=enrollment.contact_id,
                channel=channel,
                template_id=uuid.UUID(node["template_id"]) if node.get("template_id") else None,
                idempotency_key=key,
                target=target,
                journey_id=enrollment.journey_id,
                enrollment_id=enrollment.id,
                campaign=node.get("campaign"),
            )
    except ApiError as error:
        return StepOutcome("failed", None, {"reason": error.message})
    return StepOutcome(
        "done", node.get("next"), {"delivery_id": str(delivery.id), "status": delivery.status}
    )


def _update_contact(session: Session, contact_id: uuid.UUID, node: dict[str, Any]) -> StepOutcome:
    contact = session.get(Contact, contact_id)
    assert contact is not None
    traits = node.get("traits") or {}
    if traits:
        contact.traits = {**contact.traits, **traits}
    tags = [t for t in contact.tags if t not in set(node.get("remove_tags", []))]
    tags += [t for t in node.get("add_tags", []) if t not in tags]
    contact.tags = tags
    contact.updated_at = clock.now()
    if traits:
        feed.publish(
            session, [feed.Change(feed.TRAITS_CHANGED, contact_id, {"changed": sorted(traits)})]
        )
    return StepOutcome("done", node.get("next"), {"traits": traits, "tags": tags})


def _hand_off(
    session: Session, enrollment: Enrollment, node: dict[str, Any], key: str
) -> StepOutcome:
    if not _handoff:
        return StepOutcome("skipped", node.get("next"), {"reason": "no handoff is configured"})
    detail = _handoff[0](
        session,
        contact_id=enrollment.contact_id,
        journey_id=enrollment.journey_id,
        enrollment_id=enrollment.id,
        reason=node.get("reason"),
        idempotency_key=key,
    )
    return StepOutcome("done", node.get("next"), detail)
