"""The scoring arithmetic: rule points awarded for events (for every event at once, or for a
new batch), and each contact's stored scores kept equal to what its ledger and traits say.

Decay is exact, cheap to read and written down. An award or adjustment of p points at time t
is worth p · 0.5^((T − t) / half-life) at T, so the score at T is the sum of those lines
decayed to T. `contact_scores` keeps that sum as of its last write (`behavior_as_of`); reading
it later is one multiplication by 0.5^((now − as_of) / half-life). Every write also records the
decay since the previous one as a `decay` line, so the plain sum of a contact's ledger lines is
its stored score at `behavior_as_of`: the ledger explains the score line by line.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Uuid,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from capture.models import Company, Contact, Event
from core.db import dialect_insert, is_postgres, plenty_of_work_memory
from core.models import UTCDateTime, table_of
from core.settings import get_settings
from scoring.models import ContactScore, ScoreEntry, ScoringRule, ScoringSettings
from scoring.rules import event_condition, fit_condition, grade_sql
from scoring.sql import SECONDS_PER_DAY, decay_factor, local_day

RULE = "rule"
MANUAL = "manual"
DECAY = "decay"
# Up to this many contacts without a score are rescored by id; more, by a pass over everyone.
UNSCORED_BATCH = 10_000
# Below this a stored score is "unchanged": rewriting the row would only churn the table.
SCORE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Knobs:
    """The settings the arithmetic reads, fixed for one unit of work."""

    half_life_days: float
    grade_thresholds: dict[str, Any]
    utc_offset_seconds: float

    @classmethod
    def of(cls, settings: ScoringSettings, at: datetime) -> Knobs:
        offset = ZoneInfo(get_settings().default_timezone).utcoffset(at.replace(tzinfo=None))
        return cls(
            half_life_days=settings.half_life_days,
            grade_thresholds=dict(settings.grade_thresholds),
            utc_offset_seconds=offset.total_seconds() if offset else 0.0,
        )

    def local_day(self, moment: datetime) -> int:
        return math.floor((moment.timestamp() + self.utc_offset_seconds) / SECONDS_PER_DAY)


def decayed(points: float, earned_at: datetime, at: datetime, half_life_days: float) -> float:
    age_days = (at - earned_at).total_seconds() / SECONDS_PER_DAY
    return points * 0.5 ** (age_days / half_life_days)


def current_score(score: ContactScore, at: datetime, half_life_days: float) -> float:
    return decayed(score.behavior_score, score.behavior_as_of, at, half_life_days)


def current_score_sql(at: datetime, half_life_days: float) -> ColumnElement[float]:
    """The behavioural score at `at`, for WHERE clauses and segments."""
    return ContactScore.behavior_score * decay_factor(
        ContactScore.behavior_as_of, at, half_life_days
    )


def active_rules(session: Session, kind: str) -> list[ScoringRule]:
    return list(
        session.scalars(
            select(ScoringRule)
            .where(
                ScoringRule.kind == kind,
                ScoringRule.enabled.is_(True),
                ScoringRule.deleted_at.is_(None),
            )
            .order_by(ScoringRule.created_at, ScoringRule.id)
        )
    )


def award_everywhere(session: Session, rule: ScoringRule, knobs: Knobs, now: datetime) -> None:
    """Replaces the rule's ledger lines with the awards its current definition gives over all
    events, in one INSERT … SELECT (window functions apply the daily limit and first-time-only)."""
    plenty_of_work_memory(session)
    session.execute(delete(ScoreEntry).where(ScoreEntry.rule_id == rule.id))
    if not rule.enabled or rule.deleted_at is not None:
        return
    order = (Event.timestamp, Event.id)
    columns: list[Any] = [Event.id, Event.contact_id, Event.timestamp]
    if rule.daily_limit is not None:
        day = local_day(Event.timestamp, knobs.utc_offset_seconds)
        columns.append(
            func.row_number()
            .over(partition_by=(Event.contact_id, day), order_by=order)
            .label("nth_in_day")
        )
    if rule.first_time_only:
        columns.append(
            func.row_number().over(partition_by=Event.contact_id, order_by=order).label("nth_ever")
        )
    condition = event_condition(rule.event_type, rule.event_name, rule.conditions)
    matched = select(*columns).where(condition).subquery()
    limits = []
    if rule.daily_limit is not None:
        limits.append(matched.c.nth_in_day <= rule.daily_limit)
    if rule.first_time_only:
        limits.append(matched.c.nth_ever == 1)
    awards = select(
        matched.c.contact_id,
        literal(RULE),
        literal(rule.id, Uuid()),
        literal(rule.version, Integer()),
        matched.c.id,
        literal(rule.points, Float()),
        matched.c.timestamp,
        literal(now, UTCDateTime()),
    ).where(and_(*limits) if limits else matched.c.id.is_not(None))
    session.execute(
        insert(ScoreEntry).from_select(
            [
                "contact_id",
                "cause",
                "rule_id",
                "rule_version",
                "event_id",
                "points",
                "occurred_at",
                "recorded_at",
            ],
            awards,
        )
    )


def effective_points() -> ColumnElement[float]:
    """What a ledger line counts: an award counts the rule's points as they are now (a change of
    points applies to earlier awards too); other lines keep their own.
    Select it from the ledger outer-joined to `ScoringRule`."""
    return case((ScoreEntry.cause == RULE, ScoringRule.points), else_=ScoreEntry.points)


def decayed_points(at: datetime, half_life_days: float) -> ColumnElement[float]:
    """What a ledger line is worth at `at`: awards and adjustments decay from when they
    happened; a decay line only records decay, so it counts nothing here."""
    return case(
        (ScoreEntry.cause == DECAY, literal(0.0, Float())),
        else_=effective_points() * decay_factor(ScoreEntry.occurred_at, at, half_life_days),
    )


def award_weights(rule_id: uuid.UUID, sign_points: float, knobs: Knobs, now: datetime) -> Any:
    """Per contact, what the rule's awards are worth at `sign_points` each: decayed to `now`
    (`delta`) and in plain points (`nominal`)."""
    return (
        select(
            ScoreEntry.contact_id,
            (
                func.sum(decay_factor(ScoreEntry.occurred_at, now, knobs.half_life_days))
                * sign_points
            ).label("delta"),
            (func.count() * sign_points).label("nominal"),
        )
        .where(ScoreEntry.rule_id == rule_id, ScoreEntry.cause == RULE)
        .group_by(ScoreEntry.contact_id)
    )


def reprice(
    session: Session, rule: ScoringRule, old_points: float, knobs: Knobs, now: datetime
) -> None:
    """A change of points alone: the awards stay as they are (they count the rule's current
    points), and each affected contact's stored score moves by the difference times the
    awards' decayed weight now."""
    delta = rule.points - old_points
    if delta == 0:
        return
    plenty_of_work_memory(session)
    apply_rule_delta(session, award_weights(rule.id, delta, knobs, now), knobs, now)


def rederive(
    session: Session, rule: ScoringRule, applied_points: float, knobs: Knobs, now: datetime
) -> None:
    """Rederives one rule's awards from all events and moves each affected contact's stored
    score by the difference between its new and old awards (decayed to now), so contacts the
    rule never touched are not read or written."""
    plenty_of_work_memory(session)
    connection = session.connection()
    _old_weights.drop(connection, checkfirst=True)
    _old_weights.create(connection)
    session.execute(
        insert(_old_weights).from_select(
            ["contact_id", "delta", "nominal"],
            award_weights(rule.id, -applied_points, knobs, now),
        )
    )
    award_everywhere(session, rule, knobs, now)
    both = select(_old_weights.c.contact_id, _old_weights.c.delta, _old_weights.c.nominal)
    if rule.enabled and rule.deleted_at is None:
        both = union_all(both, award_weights(rule.id, rule.points, knobs, now))  # type: ignore[assignment]
    changes = both.subquery()
    apply_rule_delta(
        session,
        select(
            changes.c.contact_id,
            func.sum(changes.c.delta).label("delta"),
            func.sum(changes.c.nominal).label("nominal"),
        ).group_by(changes.c.contact_id),
        knobs,
        now,
    )
    _old_weights.drop(connection)


# The rule's awards as they were before a rederive, negated (one transaction's scratch).
_old_weights = Table(
    "scoring_old_weights",
    MetaData(),
    Column("contact_id", Uuid(), nullable=False),
    Column("delta", Float(), nullable=False),
    Column("nominal", Float(), nullable=False),
    prefixes=["TEMPORARY"],
)

# Each moved contact's new score and the decay line that goes with it (one transaction's
# scratch). No key: it is only scanned, and an index on a million random ids would cost more.
_moved = Table(
    "scoring_moved",
    MetaData(),
    Column("contact_id", Uuid(), nullable=False),
    Column("score", Float(), nullable=False),
    Column("decay", Float(), nullable=False),
    prefixes=["TEMPORARY"],
)


def apply_rule_delta(session: Session, changes: Any, knobs: Knobs, now: datetime) -> None:
    """Moves each contact in `changes` (contact_id, delta, nominal rows) to its stored score
    decayed to now plus the delta, after a `decay` line that keeps its ledger summing to the
    new stored score: the decay since the last write plus the decay of the changed awards up
    to now (their delta − nominal)."""
    change = changes.subquery()
    stored_now = current_score_sql(now, knobs.half_life_days)
    connection = session.connection()
    _moved.drop(connection, checkfirst=True)
    _moved.create(connection)
    session.execute(
        insert(_moved).from_select(
            ["contact_id", "score", "decay"],
            select(
                ContactScore.contact_id,
                stored_now + change.c.delta,
                stored_now - ContactScore.behavior_score + change.c.delta - change.c.nominal,
            )
            .join(change, change.c.contact_id == ContactScore.contact_id)
            .where(
                or_(
                    func.abs(change.c.delta) > SCORE_TOLERANCE,
                    func.abs(change.c.nominal) > SCORE_TOLERANCE,
                )
            ),
        )
    )
    move = (
        update(ContactScore)
        .where(ContactScore.contact_id == _moved.c.contact_id)
        .values(behavior_score=_moved.c.score, behavior_as_of=now, updated_at=now)
    )
    if is_postgres(session):
        # One statement: only the rows it really moved get a line (a contact erased meanwhile
        # gets none).
        moved = move.returning(ContactScore.contact_id, _moved.c.decay).cte("moved")
        write_decay_lines(session, select(moved.c.contact_id, moved.c.decay), now)
    else:
        write_decay_lines(session, select(_moved.c.contact_id, _moved.c.decay), now)
        session.execute(move)
    _moved.drop(connection)


def write_decay_lines(session: Session, rows: Select[uuid.UUID, float], now: datetime) -> None:
    """Inserts a `decay` line at `now` for each (contact id, points) row of the select whose
    points are not negligible, in contact order (the ledger's contact index fills in order)."""
    found = rows.subquery()
    lines = (
        select(
            found.c[0],
            literal(DECAY),
            found.c[1],
            literal(now, UTCDateTime()),
            literal(now, UTCDateTime()),
        )
        .where(func.abs(found.c[1]) > SCORE_TOLERANCE)
        .order_by(found.c[0])
    )
    session.execute(
        insert(ScoreEntry).from_select(
            ["contact_id", "cause", "points", "occurred_at", "recorded_at"], lines
        )
    )


def award_events(
    session: Session,
    event_ids: Sequence[int],
    rules: Iterable[ScoringRule],
    knobs: Knobs,
    now: datetime,
) -> set[uuid.UUID]:
    """Awards points for a batch of newly stored events; returns the contacts that scored.

    The daily limit and first-time-only count the awards already in the ledger, and an event
    awarded before (a redelivered batch) is skipped, so replaying a batch changes nothing."""
    scored: set[uuid.UUID] = set()
    if not event_ids:
        return scored
    for rule in rules:
        condition = event_condition(rule.event_type, rule.event_name, rule.conditions)
        matched = session.execute(
            select(Event.id, Event.contact_id, Event.timestamp)
            .where(Event.id.in_(list(event_ids)), condition)
            .order_by(Event.timestamp, Event.id)
        ).all()
        if not matched:
            continue
        contacts = list({row.contact_id for row in matched})
        awarded_before = set(
            session.scalars(
                select(ScoreEntry.event_id).where(
                    ScoreEntry.rule_id == rule.id,
                    ScoreEntry.event_id.in_([row.id for row in matched]),
                )
            )
        )
        earlier = select(ScoreEntry.contact_id, ScoreEntry.occurred_at).where(
            ScoreEntry.rule_id == rule.id,
            ScoreEntry.cause == RULE,
            ScoreEntry.contact_id.in_(contacts),
        )
        has_award: set[uuid.UUID] = set()
        per_day: Counter[tuple[uuid.UUID, int]] = Counter()
        if rule.first_time_only:
            has_award = {row.contact_id for row in session.execute(earlier)}
        if rule.daily_limit is not None:
            first, last = matched[0].timestamp, max(row.timestamp for row in matched)
            window = earlier.where(
                ScoreEntry.occurred_at >= first - timedelta(days=1),
                ScoreEntry.occurred_at <= last + timedelta(days=1),
            )
            for contact_id, occurred_at in session.execute(window):
                per_day[(contact_id, knobs.local_day(occurred_at))] += 1
        lines = []
        for row in matched:
            if row.id in awarded_before:
                continue
            if rule.first_time_only and row.contact_id in has_award:
                continue
            day_key = (row.contact_id, knobs.local_day(row.timestamp))
            if rule.daily_limit is not None and per_day[day_key] >= rule.daily_limit:
                continue
            has_award.add(row.contact_id)
            per_day[day_key] += 1
            lines.append(
                {
                    "contact_id": row.contact_id,
                    "cause": RULE,
                    "rule_id": rule.id,
                    "rule_version": rule.version,
                    "event_id": row.id,
                    "points": rule.points,
                    "occurred_at": row.timestamp,
                    "recorded_at": now,
                }
            )
        if lines:
            stmt = dialect_insert(session, ScoreEntry).on_conflict_do_nothing(
                index_elements=["rule_id", "event_id"],
                index_where=ScoreEntry.rule_id.is_not(None),
            )
            session.execute(stmt, lines)
            scored.update(line["contact_id"] for line in lines)
    return scored


def fit_points_sql(rules: Sequence[ScoringRule]) -> ColumnElement[float]:
    """The sum of the points of every fit rule the contact (joined to its company) meets."""
    total: ColumnElement[float] = literal(0.0, Float())
    for rule in rules:
        condition = fit_condition(rule.trait or "", rule.conditions)
        total = total + case((condition, literal(rule.points, Float())), else_=0.0)
    return total


def graded_contacts(
    fit_rules: Sequence[ScoringRule], knobs: Knobs, ids: list[uuid.UUID] | None = None
) -> Any:
    """(contact_id, fit, grade) of every unmerged contact, or of `ids`. The fit sum is computed
    once per contact (a materialized CTE on PostgreSQL): inlined, the planner would repeat
    every rule's text match for each grade threshold and each comparison that reads it."""
    points = (
        select(Contact.id.label("contact_id"), fit_points_sql(fit_rules).label("fit"))
        .select_from(Contact)
        .outerjoin(Company, Company.id == Contact.company_id)
        .where(Contact.merged_into_id.is_(None))
    )
    if ids is not None:
        points = points.where(Contact.id.in_(ids))
    fits = points.cte("contact_fits").prefix_with("MATERIALIZED", dialect="postgresql")
    return select(
        fits.c.contact_id, fits.c.fit, grade_sql(fits.c.fit, knobs.grade_thresholds).label("grade")
    ).subquery()


# Each rescored contact's new values while they are written (one transaction's scratch; only
# scanned, so no key).
_rescored = Table(
    "scoring_rescored",
    MetaData(),
    Column("contact_id", Uuid(), nullable=False),
    Column("behavior", Float(), nullable=False),
    Column("ledger_sum", Float(), nullable=False),
    Column("fit", Float(), nullable=False),
    Column("grade", String(1), nullable=False),
    Column("changed", Boolean(), nullable=False),
    prefixes=["TEMPORARY"],
)


def rescore(
    session: Session,
    knobs: Knobs,
    fit_rules: Sequence[ScoringRule],
    now: datetime,
    contact_ids: Collection[uuid.UUID] | None = None,
) -> None:
    """Sets each contact's stored behavioural score (its ledger decayed to `now`), fit points
    and grade, after a `decay` line that makes its ledger sum to the new score. Contacts whose
    values and ledger already agree are left alone. `contact_ids` None means every contact."""
    if contact_ids is not None and not contact_ids:
        return
    ids = list(contact_ids) if contact_ids is not None else None
    plenty_of_work_memory(session)
    ledger = (
        select(
            ScoreEntry.contact_id.label("contact_id"),
            func.sum(decayed_points(now, knobs.half_life_days)).label("total"),
            func.sum(effective_points()).label("ledger_sum"),
        )
        .outerjoin(ScoringRule, ScoringRule.id == ScoreEntry.rule_id)
        .group_by(ScoreEntry.contact_id)
    )
    if ids is not None:
        ledger = ledger.where(ScoreEntry.contact_id.in_(ids))
    totals = ledger.subquery()
    behavior = func.coalesce(totals.c.total, 0.0)
    ledger_sum = func.coalesce(totals.c.ledger_sum, 0.0)
    graded = graded_contacts(fit_rules, knobs, ids)
    stored_now = current_score_sql(now, knobs.half_life_days)
    changed = or_(
        ContactScore.contact_id.is_(None),
        func.abs(stored_now - behavior) > SCORE_TOLERANCE,
        func.abs(ContactScore.behavior_score - ledger_sum) > SCORE_TOLERANCE,
        ContactScore.fit_points != graded.c.fit,
        ContactScore.grade != graded.c.grade,
    )
    scored = (
        select(graded.c.contact_id, behavior, ledger_sum, graded.c.fit, graded.c.grade, changed)
        .select_from(graded)
        .outerjoin(totals, totals.c.contact_id == graded.c.contact_id)
        .outerjoin(ContactScore, ContactScore.contact_id == graded.c.contact_id)
    )
    connection = session.connection()
    _rescored.drop(connection, checkfirst=True)
    _rescored.create(connection)
    session.execute(
        insert(_rescored).from_select(
            ["contact_id", "behavior", "ledger_sum", "fit", "grade", "changed"], scored
        )
    )
    r = _rescored.c
    write_decay_lines(
        session,
        select(r.contact_id, r.behavior - r.ledger_sum).where(r.changed.is_(True)),
        now,
    )
    rows = select(
        r.contact_id,
        r.behavior,
        literal(now, UTCDateTime()),
        r.fit,
        r.grade,
        literal([], table_of(ContactScore).c.factors.type),
        literal(now, UTCDateTime()),
    ).where(r.changed.is_(True))
    columns = ["contact_id", "behavior_score", "behavior_as_of", "fit_points", "grade"]
    stmt = dialect_insert(session, ContactScore).from_select(
        [*columns, "factors", "updated_at"], rows
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["contact_id"],
        set_={name: stmt.excluded[name] for name in [*columns[1:], "updated_at"]},
    )
    session.execute(stmt)
    _rescored.drop(connection)


def regrade(
    session: Session, knobs: Knobs, fit_rules: Sequence[ScoringRule], now: datetime
) -> None:
    """After a fit rule change: every scored contact's fit points and grade from its traits,
    in one UPDATE of the rows that change. Behavioural scores are untouched, so the ledger is
    not read. Contacts with no score yet get a full rescore."""
    plenty_of_work_memory(session)
    graded = graded_contacts(fit_rules, knobs)
    session.execute(
        update(ContactScore)
        .where(
            ContactScore.contact_id == graded.c.contact_id,
            or_(ContactScore.fit_points != graded.c.fit, ContactScore.grade != graded.c.grade),
        )
        .values(fit_points=graded.c.fit, grade=graded.c.grade, updated_at=now)
    )
    unscored = (
        select(Contact.id)
        .outerjoin(ContactScore, ContactScore.contact_id == Contact.id)
        .where(ContactScore.contact_id.is_(None), Contact.merged_into_id.is_(None))
    )
    # Counted first: under a LIMIT the planner walks both primary keys instead of hashing.
    how_many = session.scalar(select(func.count()).select_from(unscored.subquery())) or 0
    if how_many > UNSCORED_BATCH:
        rescore(session, knobs, fit_rules, now)
    elif how_many:
        rescore(session, knobs, fit_rules, now, list(session.scalars(unscored)))


def decay_pass(session: Session, knobs: Knobs, now: datetime, min_change: float) -> int:
    """Writes down the decay of every stored score that has cooled by at least `min_change`
    points since its last write (a `decay` line, and the stored score moved to now), in two
    set-based statements; returns how many scores moved."""
    plenty_of_work_memory(session)
    stored_now = current_score_sql(now, knobs.half_life_days)
    cooled = func.abs(ContactScore.behavior_score - stored_now) >= max(min_change, SCORE_TOLERANCE)
    write_decay_lines(
        session,
        select(ContactScore.contact_id, stored_now - ContactScore.behavior_score).where(cooled),
        now,
    )
    result = session.execute(
        update(ContactScore)
        .where(cooled)
        .values(behavior_score=stored_now, behavior_as_of=now, updated_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
