"""The scoring arithmetic: rule points awarded for events (for every event at once, or for a
new batch), and each contact's stored scores kept equal to what its ledger and traits say.

Decay is exact and cheap to read: a ledger line of p points at time t is worth
p · 0.5^((now − t) / half-life) now, so a contact's score at any time is the sum of its lines
decayed to then. `contact_scores` keeps that sum as of one moment (`behavior_as_of`); reading
it later is one multiplication by 0.5^((now − as_of) / half-life).
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
    Column,
    Float,
    Integer,
    MetaData,
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
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from capture.models import Company, Contact, Event
from core.db import dialect_insert, is_postgres
from core.models import UTCDateTime, table_of
from core.settings import get_settings
from scoring.models import ContactScore, ScoreEntry, ScoringRule, ScoringSettings
from scoring.rules import event_condition, fit_condition, grade_sql
from scoring.sql import SECONDS_PER_DAY, decay_factor, local_day

RULE = "rule"
MANUAL = "manual"
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
    """What a ledger line is worth before decay: an award counts the rule's points as they are
    now (a change of points applies to earlier awards too); other lines keep their own.
    Select it from the ledger outer-joined to `ScoringRule`."""
    return case((ScoreEntry.cause == RULE, ScoringRule.points), else_=ScoreEntry.points)


def plenty_of_work_memory(session: Session) -> None:
    """Lets PostgreSQL hash a whole-population aggregate in memory instead of on disk."""
    if is_postgres(session):
        session.execute(text("SET LOCAL work_mem = '256MB'"))


def reprice(
    session: Session, rule: ScoringRule, old_points: float, knobs: Knobs, now: datetime
) -> None:
    """A change of points alone: the awards stay as they are (they count the rule's current
    points), and each affected contact's stored score moves by the difference times the
    awards' decayed weight now, in one UPDATE … FROM."""
    delta = rule.points - old_points
    if delta == 0:
        return
    plenty_of_work_memory(session)
    weights = (
        select(
            ScoreEntry.contact_id.label("contact_id"),
            func.sum(decay_factor(ScoreEntry.occurred_at, now, knobs.half_life_days)).label(
                "weight"
            ),
        )
        .where(ScoreEntry.rule_id == rule.id, ScoreEntry.cause == RULE)
        .group_by(ScoreEntry.contact_id)
        .subquery()
    )
    session.execute(
        update(ContactScore)
        .where(ContactScore.contact_id == weights.c.contact_id)
        .values(
            behavior_score=current_score_sql(now, knobs.half_life_days)
            + literal(delta, Float()) * weights.c.weight,
            behavior_as_of=now,
            updated_at=now,
        )
    )


# Per-contact change of one rule's total while it is rederived (one transaction's scratch).
_rule_delta = Table(
    "scoring_rule_delta",
    MetaData(),
    Column("contact_id", Uuid(), primary_key=True),
    Column("delta", Float(), nullable=False),
    prefixes=["TEMPORARY"],
)


def rederive(
    session: Session, rule: ScoringRule, applied_points: float, knobs: Knobs, now: datetime
) -> None:
    """Rederives one rule's awards from all events and moves each affected contact's stored
    score by the difference between its new and old awards (decayed to now), so contacts the
    rule never touched are not read or written."""
    plenty_of_work_memory(session)
    connection = session.connection()
    _rule_delta.drop(connection, checkfirst=True)
    _rule_delta.create(connection)

    def weights(sign: float, points: float) -> Any:
        return (
            select(
                ScoreEntry.contact_id,
                func.sum(decay_factor(ScoreEntry.occurred_at, now, knobs.half_life_days))
                * (sign * points),
            )
            .where(ScoreEntry.rule_id == rule.id, ScoreEntry.cause == RULE)
            .group_by(ScoreEntry.contact_id)
        )

    session.execute(
        insert(_rule_delta).from_select(["contact_id", "delta"], weights(-1, applied_points))
    )
    award_everywhere(session, rule, knobs, now)
    if rule.enabled and rule.deleted_at is None:
        new = dialect_insert(session, _rule_delta).from_select(
            ["contact_id", "delta"], weights(1, rule.points)
        )
        session.execute(
            new.on_conflict_do_update(
                index_elements=["contact_id"],
                set_={"delta": _rule_delta.c.delta + new.excluded.delta},
            )
        )
    session.execute(
        update(ContactScore)
        .where(
            ContactScore.contact_id == _rule_delta.c.contact_id,
            func.abs(_rule_delta.c.delta) > SCORE_TOLERANCE,
        )
        .values(
            behavior_score=current_score_sql(now, knobs.half_life_days) + _rule_delta.c.delta,
            behavior_as_of=now,
            updated_at=now,
        )
    )
    _rule_delta.drop(connection)


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
                index_elements=["rule_id", "event_id"]
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


def rescore(
    session: Session,
    knobs: Knobs,
    fit_rules: Sequence[ScoringRule],
    now: datetime,
    contact_ids: Collection[uuid.UUID] | None = None,
) -> None:
    """Sets each contact's stored behavioural score (its ledger decayed to `now`), fit points
    and grade in one INSERT … SELECT … ON CONFLICT DO UPDATE; rows whose values did not change
    are left alone. `contact_ids` None means every contact."""
    if contact_ids is not None and not contact_ids:
        return
    ids = list(contact_ids) if contact_ids is not None else None
    plenty_of_work_memory(session)
    ledger = (
        select(
            ScoreEntry.contact_id.label("contact_id"),
            func.sum(
                effective_points() * decay_factor(ScoreEntry.occurred_at, now, knobs.half_life_days)
            ).label("total"),
        )
        .outerjoin(ScoringRule, ScoringRule.id == ScoreEntry.rule_id)
        .group_by(ScoreEntry.contact_id)
    )
    if ids is not None:
        ledger = ledger.where(ScoreEntry.contact_id.in_(ids))
    totals = ledger.subquery()
    scored = (
        select(
            Contact.id.label("contact_id"),
            func.coalesce(totals.c.total, 0.0).label("behavior"),
            fit_points_sql(fit_rules).label("fit"),
        )
        .select_from(Contact)
        .outerjoin(Company, Company.id == Contact.company_id)
        .outerjoin(totals, totals.c.contact_id == Contact.id)
        .where(Contact.merged_into_id.is_(None))
    )
    if ids is not None:
        scored = scored.where(Contact.id.in_(ids))
    computed = scored.subquery()
    rows = select(
        computed.c.contact_id,
        computed.c.behavior,
        literal(now, UTCDateTime()),
        computed.c.fit,
        grade_sql(computed.c.fit, knobs.grade_thresholds),
        literal([], table_of(ContactScore).c.factors.type),
        literal(now, UTCDateTime()),
    ).where(computed.c.contact_id.is_not(None))  # SQLite's upsert needs a WHERE here
    columns = ["contact_id", "behavior_score", "behavior_as_of", "fit_points", "grade"]
    stmt = dialect_insert(session, ContactScore).from_select(
        [*columns, "factors", "updated_at"], rows
    )
    stored_now = current_score_sql(now, knobs.half_life_days)
    stmt = stmt.on_conflict_do_update(
        index_elements=["contact_id"],
        set_={
            "behavior_score": stmt.excluded.behavior_score,
            "behavior_as_of": stmt.excluded.behavior_as_of,
            "fit_points": stmt.excluded.fit_points,
            "grade": stmt.excluded.grade,
            "updated_at": stmt.excluded.updated_at,
        },
        where=or_(
            func.abs(stored_now - stmt.excluded.behavior_score) > SCORE_TOLERANCE,
            ContactScore.fit_points != stmt.excluded.fit_points,
            ContactScore.grade != stmt.excluded.grade,
        ),
    )
    session.execute(stmt)
