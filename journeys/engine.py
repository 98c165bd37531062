"""The enrollment state machine: enrolling contacts under the re-entry rules, claiming due
enrollments, and advancing a batch of them set-based until each waits or ends.

A batch moves in rounds: every enrollment still moving runs one node per round, enrollments at
the same node of the same version run together (one SQL query for a condition, one statement
for a contact update), every step is recorded once under its idempotency key
`enrollment:node:visit` (which also keys the step's side effects), and the enrollments are
written back in one UPDATE … FROM at the end."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, Select, bindparam, exists, func, select, update
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.models import Contact, Event
from channels import service as channels
from channels.models import Robot
from core import feed
from core.clock import clock
from core.db import bulk_update, dialect_insert, insert_new, is_postgres
from core.models import table_of
from journeys import segments
from journeys.conditions import Compiler, parse, parse_event_filters
from journeys.definition import duration, nodes_by_id
from journeys.models import RUNNING, Enrollment, EnrollmentStep, Journey, JourneyVersion
from scoring import lifecycle
from scoring import service as scoring
from scoring.schemas import AdjustmentCreate

DEFAULT_TIMEZONE = "Asia/Shanghai"
# A claimed enrollment whose step was lost (killed worker) is claimed again after this.
CLAIM_LEASE = timedelta(minutes=5)
MAX_STEPS_PER_RUN = 50
ENROLL_BATCH = 1000
SEND_CHANNELS = {"send_email": "email", "send_sms": "sms", "call_webhook": "webhook"}
# The columns a batch writes back to its enrollments.
STATE_COLUMNS = (
    "status",
    "current_node",
    "next_run_at",
    "wake_at",
    "waiting_since",
    "waiting_for_event",
    "finished_at",
    "outcome",
)


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


@dataclass
class Run:
    """One enrollment being advanced in this batch: its state as it will be written back."""

    id: uuid.UUID
    journey_id: uuid.UUID
    version_id: uuid.UUID
    contact_id: uuid.UUID
    status: str
    current_node: str
    next_run_at: datetime | None
    wake_at: datetime | None
    waiting_since: datetime | None
    waiting_for_event: str | None
    finished_at: datetime | None = None
    outcome: str | None = None
    key: str = field(default="", compare=False)

    def state(self) -> dict[str, Any]:
        return {"id": self.id, **{name: getattr(self, name) for name in STATE_COLUMNS}}


def enroll(
    session: Session,
    journey: Journey,
    contact_ids: Iterable[uuid.UUID],
    entry_keys: Mapping[uuid.UUID, str] | None = None,
) -> list[uuid.UUID]:
    """Enrolls contacts in the journey's live version under its re-entry rules; returns the
    contacts that went in. A contact already running in the journey is left where it is; a
    contact given an entry key that an enrollment of this journey already holds stays out."""
    if journey.status != "published" or journey.live_version_id is None:
        return []
    version = session.get(JourneyVersion, journey.live_version_id)
    assert version is not None
    ids = sorted(set(contact_ids))
    entered: list[uuid.UUID] = []
    for start in range(0, len(ids), ENROLL_BATCH):
        batch = ids[start : start + ENROLL_BATCH]
        entered += _enroll_batch(session, version, batch, entry_keys or {})
    return entered


def _enroll_batch(
    session: Session,
    version: JourneyVersion,
    contact_ids: list[uuid.UUID],
    entry_keys: Mapping[uuid.UUID, str],
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
            "entry_key": entry_keys.get(contact_id),
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
    """Claims due enrollments of running journeys for `advance_many` in later transactions:
    concurrent schedulers on PostgreSQL skip each other's rows; a claim not finished within
    the lease is claimed again."""
    now = clock.now()
    due = select(Enrollment.id).where(*_due(now)).order_by(Enrollment.next_run_at).limit(limit)
    if is_postgres(session):
        due = due.with_for_update(of=Enrollment, skip_locked=True)
    ids = list(session.scalars(due))
    if ids:
        session.execute(
            update(Enrollment).where(Enrollment.id.in_(ids)).values(next_run_at=now + CLAIM_LEASE)
        )
    return ids


def run_due(session: Session, limit: int = 500) -> int:
    """Claims due enrollments and advances them in this transaction (the embedded scheduler,
    the benchmark and tests); their row locks are the claim. Returns how many ran."""
    due = _state_query().where(*_due(clock.now())).order_by(Enrollment.next_run_at).limit(limit)
    runs = _locked(session, due)
    _advance(session, runs)
    return len(runs)


def advance(session: Session, enrollment_id: uuid.UUID) -> None:
    """Runs one enrollment's nodes from where it stands until it waits or ends."""
    advance_many(session, [enrollment_id])


def advance_many(session: Session, enrollment_ids: Sequence[uuid.UUID]) -> int:
    """Runs the claimed enrollments' nodes, together, until each waits or ends; returns how
    many ran. An enrollment that another transaction holds, or whose contact it holds, is
    skipped without waiting (batches never deadlock on contacts) and made due again."""
    ids = sorted(set(enrollment_ids))
    if not ids:
        return 0
    query = _state_query().where(Enrollment.id.in_(ids), Enrollment.status.in_(RUNNING))
    runs = _locked(session, query.order_by(Enrollment.id))
    skipped = set(ids) - {run.id for run in runs}
    if skipped and is_postgres(session):
        now = clock.now()
        free = (
            select(Enrollment.id)
            .where(
                Enrollment.id.in_(skipped),
                Enrollment.status.in_(RUNNING),
                Enrollment.next_run_at > now,
            )
            .with_for_update(skip_locked=True)
        )
        session.execute(update(Enrollment).where(Enrollment.id.in_(free)).values(next_run_at=now))
    _advance(session, runs)
    return len(runs)


def _due(now: datetime) -> tuple[ColumnElement[bool], ...]:
    published = select(Journey.id).where(Journey.status == "published")
    return (
        Enrollment.status.in_(RUNNING),
        Enrollment.next_run_at <= now,
        Enrollment.journey_id.in_(published),
    )


def _state_query() -> Select[Any]:
    columns: tuple[Any, ...] = (
        Enrollment.id,
        Enrollment.journey_id,
        Enrollment.version_id,
        Enrollment.contact_id,
        Enrollment.status,
        Enrollment.current_node,
        Enrollment.next_run_at,
        Enrollment.wake_at,
        Enrollment.waiting_since,
        Enrollment.waiting_for_event,
    )
    return select(*columns)


def _locked(session: Session, query: Select[Any]) -> list[Run]:
    """The enrollments the query selects, with their contacts, locked for this transaction
    (on PostgreSQL; SQLite has a single writer)."""
    if is_postgres(session):
        # NO KEY UPDATE: events and other rows referencing the contact may still be inserted.
        query = query.join(Contact, Contact.id == Enrollment.contact_id).with_for_update(
            of=[Enrollment, Contact], key_share=True, skip_locked=True
        )
    return [Run(**row._asdict()) for row in session.execute(query)]


def _advance(session: Session, runs: list[Run]) -> None:
    if not runs:
        return
    definitions: dict[uuid.UUID, dict[str, Any]] = dict(
        session.execute(
            select(JourneyVersion.id, JourneyVersion.definition).where(
                JourneyVersion.id.in_({run.version_id for run in runs})
            )
        ).all()
    )
    batch = Batch(session, definitions, _visits(session, [run.id for run in runs]))
    moving = runs
    for _ in range(MAX_STEPS_PER_RUN):
        if not moving:
            break
        moving = batch.round(moving)
    for run in moving:
        run.next_run_at = batch.now
    batch.record()
    bulk_update(session, table_of(Enrollment), [run.state() for run in runs])


def _visits(session: Session, enrollment_ids: list[uuid.UUID]) -> Counter[tuple[uuid.UUID, str]]:
    """How many times each enrollment has finished each node so far."""
    rows = session.execute(
        select(EnrollmentStep.enrollment_id, EnrollmentStep.node_id, func.count())
        .where(EnrollmentStep.enrollment_id.in_(enrollment_ids), EnrollmentStep.result != "waiting")
        .group_by(EnrollmentStep.enrollment_id, EnrollmentStep.node_id)
    )
    return Counter({(enrollment_id, node_id): count for enrollment_id, node_id, count in rows})


class Batch:
    """The enrollments advanced in one transaction, one round (one node each) at a time."""

    def __init__(
        self,
        session: Session,
        definitions: dict[uuid.UUID, dict[str, Any]],
        visits: Counter[tuple[uuid.UUID, str]],
    ) -> None:
        self.session = session
        self.definitions = definitions
        self.nodes = {version_id: nodes_by_id(d) for version_id, d in definitions.items()}
        self.visits = visits
        self.now = clock.now()
        self.steps: list[dict[str, Any]] = []

    def round(self, runs: list[Run]) -> list[Run]:
        """Runs one node of each enrollment; returns those that move on at once."""
        moving: list[Run] = []
        groups: dict[tuple[uuid.UUID, str], list[Run]] = defaultdict(list)
        for run in self._goals(runs):
            groups[(run.version_id, run.current_node)].append(run)
        for (version_id, node_id), group in groups.items():
            node = self.nodes[version_id].get(node_id)
            if node is None:
                for run in group:
                    self._finish(run, "failed", f"node {node_id} is gone")
                continue
            for run in group:
                run.key = f"{run.id}:{node_id}:{self.visits[(run.id, node_id)] + 1}"
            waiting = [run for run in group if run.status == "waiting"]
            outcomes = self._waits_over(node, waiting) if waiting else {}
            for run in waiting:
                if run.id not in outcomes:
                    run.next_run_at = run.wake_at
            fresh = [run for run in group if run.status != "waiting"]
            if fresh:
                outcomes.update(run_node(self.session, node, fresh, self.now))
            for run in group:
                if run.id in outcomes and self._move(run, node, outcomes[run.id]):
                    moving.append(run)
        return moving

    def _goals(self, runs: list[Run]) -> list[Run]:
        """Finishes, as converted, the enrollments whose journey goal their contact meets."""
        by_version: dict[uuid.UUID, list[Run]] = defaultdict(list)
        for run in runs:
            by_version[run.version_id].append(run)
        remaining: list[Run] = []
        for version_id, group in by_version.items():
            goal = self.definitions[version_id].get("goal")
            met = (
                matching(self.session, goal, {run.contact_id for run in group})
                if goal is not None
                else set()
            )
            for run in group:
                if run.contact_id in met:
                    self._finish(run, "converted", "goal met")
                else:
                    remaining.append(run)
        return remaining

    def _waits_over(self, node: dict[str, Any], runs: list[Run]) -> dict[uuid.UUID, StepOutcome]:
        """The outcomes of the waits that are over; a wait for an event that happened moves
        on to its `matched` branch at once."""
        outcomes: dict[uuid.UUID, StepOutcome] = {}
        if node["type"] == "wait_for_event":
            latest = _latest_events(self.session, node, runs)
            for run in runs:
                assert run.waiting_since is not None
                seen = latest.get(run.contact_id)
                if seen is not None and seen >= run.waiting_since:
                    outcomes[run.id] = StepOutcome("done", node["matched"], {"branch": "matched"})
                elif run.wake_at is not None and run.wake_at <= self.now:
                    outcomes[run.id] = StepOutcome(
                        "done", node["timed_out"], {"branch": "timed_out"}
                    )
            return outcomes
        for run in runs:
            if run.wake_at is not None and run.wake_at <= self.now:
                outcomes[run.id] = StepOutcome("done", node.get("next"), {})
        return outcomes

    def _move(self, run: Run, node: dict[str, Any], outcome: StepOutcome) -> bool:
        """Records the step and moves the enrollment on; whether it runs again this batch."""
        self._step(run, node["id"], outcome)
        if outcome.result == "waiting":
            run.status = "waiting"
            run.waiting_since = self.now
            run.wake_at = run.next_run_at = outcome.wake_at
            run.waiting_for_event = awaited(node) if node["type"] == "wait_for_event" else None
            return outcome.wake_at is None or outcome.wake_at <= self.now
        self.visits[(run.id, node["id"])] += 1
        run.status = "active"
        run.wake_at = run.waiting_since = run.waiting_for_event = None
        if outcome.result == "failed":
            self._finish(run, "failed", outcome.detail.get("reason"))
        elif node["type"] == "exit":
            self._finish(run, "exited", "exit node")
        elif outcome.next_node is None:
            self._finish(run, "completed", None)
        else:
            run.current_node = outcome.next_node
            return True
        return False

    def _finish(self, run: Run, status: str, reason: str | None) -> None:
        run.status = status
        run.outcome = reason
        run.finished_at = self.now
        run.next_run_at = run.wake_at = run.waiting_since = run.waiting_for_event = None

    def _step(self, run: Run, node_id: str, outcome: StepOutcome) -> None:
        waiting = outcome.result == "waiting"
        self.steps.append(
            {
                "enrollment_id": run.id,
                "journey_id": run.journey_id,
                "version_id": run.version_id,
                "node_id": node_id,
                "idempotency_key": run.key + ":waiting" if waiting else run.key,
                "result": outcome.result,
                "detail": outcome.detail,
                "at": self.now,
            }
        )

    def record(self) -> None:
        """Writes the batch's steps in the order they ran; a key recorded before (a retried
        step) is left as it is."""
        if not self.steps:
            return
        table = table_of(EnrollmentStep)
        if is_postgres(self.session):
            insert_new(
                self.session, table, self.steps, ["idempotency_key"], ["id"], "enrollment_id"
            )
        else:
            self.session.execute(
                dialect_insert(self.session, table).on_conflict_do_nothing(), self.steps
            )
        self.steps = []


def run_node(
    session: Session, node: dict[str, Any], runs: list[Run], now: datetime
) -> dict[uuid.UUID, StepOutcome]:
    """Runs one (non-waiting) node for every enrollment standing on it."""
    kind = node["type"]
    after = node.get("next")
    if kind in SEND_CHANNELS or kind == "notify_sales":
        return {run.id: _send(session, run, node) for run in runs}
    if kind == "update_contact":
        return _update_contacts(session, node, runs)
    if kind == "set_lifecycle_stage":
        return _set_stages(session, node, runs, now)
    if kind == "adjust_score":
        return {run.id: _adjust_score(session, node, run) for run in runs}
    if kind == "condition":
        met = matching(session, node["condition"], {run.contact_id for run in runs})
        return {
            run.id: StepOutcome(
                "done",
                node.get("yes" if run.contact_id in met else "no"),
                {"branch": "yes" if run.contact_id in met else "no"},
            )
            for run in runs
        }
    if kind == "split":
        outcomes = {}
        for run in runs:
            index = split_branch(run.journey_id, run.contact_id, node)
            outcomes[run.id] = StepOutcome(
                "done", node["branches"][index]["next"], {"branch": str(index)}
            )
        return outcomes
    if kind == "handoff":
        return {run.id: _hand_off(session, run, node) for run in runs}
    if kind in ("add_to_segment", "remove_from_segment"):
        change = segments.add_members if kind == "add_to_segment" else segments.remove_members
        moved = set(change(session, uuid.UUID(node["segment_id"]), [r.contact_id for r in runs]))
        return {
            run.id: StepOutcome("done", after, {"changed": run.contact_id in moved}) for run in runs
        }
    if kind == "enroll_in_journey":
        target = session.get(Journey, uuid.UUID(node["journey_id"]))
        entered = set(enroll(session, target, [r.contact_id for r in runs])) if target else set()
        return {
            run.id: StepOutcome("done", after, {"enrolled": run.contact_id in entered})
            for run in runs
        }
    if kind == "exit":
        return {run.id: StepOutcome("done", None, {}) for run in runs}
    wakes = wake_times(session, node, [run.contact_id for run in runs], now)
    return {run.id: StepOutcome("waiting", None, {}, wake_at=wakes[run.contact_id]) for run in runs}


def matching(session: Session, condition: dict[str, Any], contact_ids: set[uuid.UUID]) -> set[Any]:
    """Which of the contacts meet a condition now, in one query (the SQL segments use)."""
    members = Compiler(clock.now(), is_postgres(session)).members(parse(condition))
    return set(session.scalars(members.where(Contact.id.in_(contact_ids))))


def matches(session: Session, contact_id: uuid.UUID, condition: dict[str, Any]) -> bool:
    """Whether one contact meets a condition now (the dry run)."""
    members = Compiler(clock.now(), is_postgres(session)).members(parse(condition))
    return bool(session.scalar(select(exists(members.where(Contact.id == contact_id)))))


def wake_times(
    session: Session, node: dict[str, Any], contact_ids: list[uuid.UUID], now: datetime
) -> dict[uuid.UUID, datetime]:
    """When each contact's wait at the node ends."""
    kind = node["type"]
    if kind in ("wait", "wait_for_event"):
        field_name = "duration" if kind == "wait" else "timeout"
        span = duration(node[field_name], field_name, {})
        assert span is not None
        return dict.fromkeys(contact_ids, now + span)
    if kind == "wait_for_date":
        traits: dict[uuid.UUID, dict[str, Any]] = dict(
            session.execute(
                select(Contact.id, Contact.traits).where(Contact.id.in_(contact_ids))
            ).all()
        )
        return {c: date_trait_time(traits.get(c) or {}, node, now) for c in contact_ids}
    zones = dict(
        session.execute(
            select(Contact.id, Contact.timezone).where(Contact.id.in_(contact_ids))
        ).all()
    )
    return {
        c: next_time_of_day(now, node["time"], node.get("weekdays"), zones.get(c))
        for c in contact_ids
    }


def wake_time(
    session: Session, enrollment: Enrollment, node: dict[str, Any], now: datetime
) -> datetime:
    return wake_times(session, node, [enrollment.contact_id], now)[enrollment.contact_id]


def date_trait_time(traits: dict[str, Any], node: dict[str, Any], now: datetime) -> datetime:
    """The contact's date trait plus the offset; now when the trait is missing, unreadable
    or already past (the step history shows which)."""
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


def awaited(node: dict[str, Any]) -> str:
    """What a wait for an event is filed under: the event's name, or `call:<type>` when it
    waits for a call type alone (page views have no name)."""
    return node.get("event") or f"call:{node['call']}"


def describe_awaited(spec: dict[str, Any]) -> str:
    """An event trigger's or wait's event in words: `Form Submitted`, `a page call`."""
    call = spec.get("call")
    if spec.get("event") is None:
        return f"a {call} call"
    return spec["event"] + (f" ({call} call)" if call else "")


def awaited_by(name: str | None, call_type: str | None) -> list[str]:
    """The waits a stored event of this name and call type may end."""
    return [key for key in (name, call_type and f"call:{call_type}") if key]


def _latest_events(
    session: Session, node: dict[str, Any], runs: list[Run]
) -> dict[uuid.UUID, datetime]:
    """Each contact's latest matching event since the earliest of their waits began."""
    since = min(run.waiting_since for run in runs if run.waiting_since is not None)
    compiler = Compiler(clock.now(), is_postgres(session))
    rows = session.execute(
        select(Event.contact_id, func.max(Event.timestamp))
        .where(
            Event.contact_id.in_({run.contact_id for run in runs}),
            *([Event.name == node["event"]] if node.get("event") is not None else []),
            *([Event.type == node["call"]] if node.get("call") is not None else []),
            Event.timestamp >= since,
            *compiler.event_filters(parse_event_filters(node.get("where", []), "where")),
        )
        .group_by(Event.contact_id)
    )
    return {contact_id: _aware(at) for contact_id, at in rows}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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


def _send(session: Session, run: Run, node: dict[str, Any]) -> StepOutcome:
    """Records the message with channels under the step's key; channels sends it after
    commit and applies consent, suppression, caps and quiet hours then."""
    kind = node["type"]
    if kind == "notify_sales":
        robot = session.get(Robot, uuid.UUID(node["robot_id"]))
        channel = robot.kind if robot is not None else "wecom"
        target = {"robot_id": node["robot_id"]}
    else:
        channel = SEND_CHANNELS[kind]
        target = {"endpoint_id": node["endpoint_id"]} if kind == "call_webhook" else {}
    try:
        with session.begin_nested():
            delivery = channels.send(
                session,
                contact_id=run.contact_id,
                channel=channel,
                template_id=uuid.UUID(node["template_id"]) if node.get("template_id") else None,
                idempotency_key=run.key,
                target=target,
                journey_id=run.journey_id,
                enrollment_id=run.id,
                campaign=node.get("campaign"),
            )
    except ApiError as error:
        return StepOutcome("failed", None, {"reason": error.message})
    return StepOutcome(
        "done", node.get("next"), {"delivery_id": str(delivery.id), "status": delivery.status}
    )


def _update_contacts(
    session: Session, node: dict[str, Any], runs: list[Run]
) -> dict[uuid.UUID, StepOutcome]:
    """Sets traits and tags of all the contacts in one statement, and tells the change feed
    which traits changed."""
    contact_ids = {run.contact_id for run in runs}
    current = {
        row.id: (row.traits or {}, row.tags or [])
        for row in session.execute(
            select(Contact.id, Contact.traits, Contact.tags).where(Contact.id.in_(contact_ids))
        )
    }
    traits = node.get("traits") or {}
    removed = set(node.get("remove_tags", []))
    changes: dict[uuid.UUID, list[Any]] = {}
    rows = []
    for contact_id, (old_traits, old_tags) in current.items():
        tags = [t for t in old_tags if t not in removed]
        tags += [t for t in node.get("add_tags", []) if t not in tags]
        changes[contact_id] = tags
        rows.append(
            {
                "b_id": contact_id,
                "traits": {**old_traits, **traits},
                "tags": tags,
                "updated_at": clock.now(),
            }
        )
    if rows:
        contacts = table_of(Contact)
        session.execute(
            update(contacts)
            .where(contacts.c.id == bindparam("b_id"))
            .values(
                traits=bindparam("traits"),
                tags=bindparam("tags"),
                updated_at=bindparam("updated_at"),
            ),
            rows,
        )
    if traits and changes:
        feed.publish(
            session,
            [
                feed.Change(feed.TRAITS_CHANGED, contact_id, {"changed": sorted(traits)})
                for contact_id in changes
            ],
        )
    return {
        run.id: StepOutcome(
            "done", node.get("next"), {"traits": traits, "tags": changes.get(run.contact_id, [])}
        )
        for run in runs
    }


def _set_stages(
    session: Session, node: dict[str, Any], runs: list[Run], now: datetime
) -> dict[uuid.UUID, StepOutcome]:
    """Moves each contact to the stage through scoring, which records every transition:
    forward moves together, as automatic moves caused by the journey; moves back or out of
    the funnel one by one, as explicit ones. A contact already there is left as it is."""
    stage = node["stage"]
    stages = dict(
        session.execute(
            select(Contact.id, Contact.lifecycle_stage).where(
                Contact.id.in_({run.contact_id for run in runs})
            )
        ).all()
    )
    forward: list[lifecycle.Move] = []
    explicit: dict[uuid.UUID, str] = {}
    for run in runs:
        current = stages.get(run.contact_id)
        if current == stage or run.contact_id in explicit:
            continue
        reason = f"journey {run.journey_id} step {node['id']}"
        if current not in lifecycle.OUTSIDE_STAGES and lifecycle.rank(stage) > lifecycle.rank(
            current
        ):
            forward.append(lifecycle.Move(run.contact_id, stage, now, "journey", reason))
        else:
            explicit[run.contact_id] = reason
    lifecycle.advance(session, forward, now)
    if explicit:
        for contact in session.scalars(
            select(Contact)
            .where(Contact.id.in_(explicit))
            .execution_options(populate_existing=True)
        ):
            lifecycle.set_stage(session, contact, stage, explicit[contact.id], now, None)
    return {
        run.id: StepOutcome(
            "done",
            node.get("next"),
            {
                "from": stages.get(run.contact_id),
                "to": stage,
                "changed": stages.get(run.contact_id) != stage,
            },
        )
        for run in runs
    }


def _adjust_score(session: Session, node: dict[str, Any], run: Run) -> StepOutcome:
    """Adds (or, when negative, subtracts) points as a manual ledger line of its own that
    names the step and is held once by the step's key; rescoring may move the contact to MQL."""
    note = node.get("note") or f"journey {run.journey_id} step {node['id']}"
    entry = scoring.adjust_score(
        session,
        run.contact_id,
        AdjustmentCreate(points=float(node["points"]), note=f"{note} ({run.key})"),
        None,  # a journey step acts for no API key
        idempotency_key=f"journey:{run.key}",
    )
    return StepOutcome("done", node.get("next"), {"points": entry.points, "entry_id": entry.id})


def _hand_off(session: Session, run: Run, node: dict[str, Any]) -> StepOutcome:
    if not _handoff:
        return StepOutcome("skipped", node.get("next"), {"reason": "no handoff is configured"})
    detail = _handoff[0](
        session,
        contact_id=run.contact_id,
        journey_id=run.journey_id,
        enrollment_id=run.id,
        reason=node.get("reason"),
        idempotency_key=run.key,
    )
    return StepOutcome("done", node.get("next"), detail)
