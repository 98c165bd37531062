"""Keeping scores current: the settings row and default rules, rescoring after a change, the
change-feed consumer that scores new events, and MQL promotion with its `became_mql` event."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

import attribution
from capture.contacts import CONTACT_DELETED
from capture.models import Contact
from core import feed
from core.clock import clock
from core.db import dialect_insert
from scoring import emit, lifecycle
from scoring.engine import (
    Knobs,
    active_rules,
    award_events,
    award_everywhere,
    current_score_sql,
    decay_pass,
    rederive,
    regrade,
    reprice,
    rescore,
)
from scoring.models import (
    DEFAULT_LABEL_DAYS,
    SETTINGS_ROW_ID,
    ContactScore,
    LifecycleTransition,
    ScoreEntry,
    ScoringRule,
    ScoringRuleVersion,
    ScoringSettings,
)
from scoring.rules import BEHAVIOR, DEFAULT_GRADE_THRESHOLDS, DEFAULT_RULES, FIT, RuleSpec

FEED_CONSUMER = "scoring"
# The daily decay pass writes down a score's decay once it has cooled by this many points.
DECAY_PASS_MIN_POINTS = 1.0


def scoring_settings(session: Session) -> ScoringSettings:
    """The settings row; created with the default rules on first use."""
    row = session.get(ScoringSettings, SETTINGS_ROW_ID)
    if row is not None:
        return row
    now = clock.now()
    created = session.execute(
        dialect_insert(session, ScoringSettings)
        .values(
            id=SETTINGS_ROW_ID,
            half_life_days=30.0,
            mql_threshold=60.0,
            mql_min_grade="C",
            grade_thresholds=DEFAULT_GRADE_THRESHOLDS,
            label_days=DEFAULT_LABEL_DAYS,
            min_positives=100,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(ScoringSettings.id)
    ).scalar_one_or_none()
    if created is not None:
        for spec in DEFAULT_RULES:
            add_rule(session, spec, actor_key_id=None, now=now).scored_version = 1
    row = session.get(ScoringSettings, SETTINGS_ROW_ID)
    assert row is not None
    return row


def knobs(session: Session, at: datetime) -> Knobs:
    return Knobs.of(scoring_settings(session), at)


def rule_definition(rule: ScoringRule) -> dict[str, Any]:
    return {
        "kind": rule.kind,
        "name": rule.name,
        "event_type": rule.event_type,
        "event_name": rule.event_name,
        "trait": rule.trait,
        "conditions": rule.conditions,
        "points": rule.points,
        "daily_limit": rule.daily_limit,
        "first_time_only": rule.first_time_only,
        "enabled": rule.enabled,
    }


def record_version(
    session: Session, rule: ScoringRule, action: str, actor_key_id: uuid.UUID | None
) -> None:
    session.add(
        ScoringRuleVersion(
            rule_id=rule.id,
            version=rule.version,
            action=action,
            definition=rule_definition(rule),
            changed_by=actor_key_id,
            changed_at=clock.now(),
        )
    )


def add_rule(
    session: Session, spec: RuleSpec, actor_key_id: uuid.UUID | None, now: datetime
) -> ScoringRule:
    rule = ScoringRule(
        kind=spec.kind,
        name=spec.name.strip(),
        event_type=spec.event_type,
        event_name=spec.event_name,
        trait=spec.trait,
        conditions=list(spec.conditions),
        points=float(spec.points),
        daily_limit=spec.daily_limit,
        first_time_only=spec.first_time_only,
        enabled=spec.enabled,
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(rule)
    session.flush()
    record_version(session, rule, "created", actor_key_id)
    session.flush()
    return rule


def rescore_rule(session: Session, rule_id: uuid.UUID, version: int) -> bool:
    """Applies one rule change to every contact; False when a newer change superseded it.

    A change of points alone reprices earlier awards (`engine.reprice`); any other change of
    a behavioural rule rederives its awards (`engine.rederive`); both touch only the contacts
    the rule scored. A fit rule regrades everyone (`engine.regrade`)."""
    rule = session.get(ScoringRule, rule_id, with_for_update=True)
    if rule is None or rule.version != version:
        return False
    now = clock.now()
    k = knobs(session, now)
    applied = applied_definition(session, rule)
    applied_points = float(applied["points"]) if applied is not None else 0.0
    if rule.kind != BEHAVIOR:
        regrade(session, k, active_rules(session, FIT), now)
    elif applied is not None and only_points_changed(applied, rule):
        reprice(session, rule, applied_points, k, now)
    else:
        rederive(session, rule, applied_points, k, now)
    rule.scored_version = version
    promote_mqls(session, now)
    return True


def applied_definition(session: Session, rule: ScoringRule) -> dict[str, Any] | None:
    """The definition the ledger reflects now (None if the rule was never scored)."""
    if rule.scored_version == 0:
        return None
    return session.scalar(
        select(ScoringRuleVersion.definition).where(
            ScoringRuleVersion.rule_id == rule.id,
            ScoringRuleVersion.version == rule.scored_version,
        )
    )


def only_points_changed(applied: dict[str, Any], rule: ScoringRule) -> bool:
    current = rule_definition(rule)
    ignored = ("points", "name")
    return (
        rule.enabled
        and rule.deleted_at is None
        and all(applied.get(key) == value for key, value in current.items() if key not in ignored)
    )


def rescore_all(session: Session) -> None:
    """Rederives everything from the events: every rule's awards, every score, the stages the
    events imply, and MQLs (after a half-life or grade change, or a bulk load)."""
    now = clock.now()
    k = knobs(session, now)
    for rule in session.scalars(select(ScoringRule).where(ScoringRule.kind == BEHAVIOR)):
        award_everywhere(session, rule, k, now)
        rule.scored_version = rule.version
    rescore(session, k, active_rules(session, FIT), now)
    lifecycle.advance(session, lifecycle.moves_for_events(session, None), now)
    lifecycle.reconcile_all(session, now)
    promote_mqls(session, now)


def promote_mqls(
    session: Session, now: datetime, contact_ids: Collection[uuid.UUID] | None = None
) -> list[dict[str, Any]]:
    """Moves contacts whose score and grade pass the thresholds to MQL, each with a
    `became_mql` event; returns the transitions."""
    settings = scoring_settings(session)
    moves = lifecycle.mql_moves(
        session,
        now,
        settings.half_life_days,
        settings.mql_threshold,
        settings.mql_min_grade,
        contact_ids,
    )
    transitions = lifecycle.advance(session, moves, now)
    became = [t for t in transitions if t["to_stage"] == lifecycle.MQL]
    emit.track(
        session,
        [
            (
                t["contact_id"],
                emit.BECAME_MQL,
                {"reason": t["reason"], "transition_id": t["id"]},
                f"became_mql:{t['id']}",
                now,
            )
            for t in became
        ],
    )
    return became


def decay_scores(session: Session, now: datetime, min_change: float = DECAY_PASS_MIN_POINTS) -> int:
    """The scheduled decay pass: writes down every score that has cooled by `min_change` points
    (a `decay` ledger line each, the stored score moved to now) and emits `cooled_below_mql`
    for MQLs whose score has dropped below the threshold since its last write (the stage stays;
    stages never move back on their own). Returns how many scores moved."""
    settings = scoring_settings(session)
    k = knobs(session, now)
    score_now = current_score_sql(now, settings.half_life_days)
    threshold = settings.mql_threshold
    cooled = session.execute(
        select(ContactScore.contact_id, score_now)
        .join(Contact, Contact.id == ContactScore.contact_id)
        .where(
            Contact.lifecycle_stage == lifecycle.MQL,
            ContactScore.behavior_score >= threshold,
            score_now < threshold,
        )
    ).all()
    moved = decay_pass(session, k, now, min_change)
    emit.track(
        session,
        [
            (
                contact_id,
                emit.COOLED_BELOW_MQL,
                {"score": round(score, 2), "mql_threshold": threshold},
                f"cooled_below_mql:{contact_id}:{now.isoformat()}",
                now,
            )
            for contact_id, score in cooled
        ],
    )
    return moved


def handle_changes(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    """The change-feed consumer: forgets erased contacts, scores new events, regrades contacts
    whose traits changed, follows merges, moves stages the events call for, and promotes new
    MQLs."""
    now = clock.now()
    forget_contacts(
        session,
        [
            contact_id
            for r in records
            if r.kind == CONTACT_DELETED
            for contact_id in [r.contact_id, *map(uuid.UUID, r.payload["merged_contact_ids"])]
        ],
    )
    event_ids = [
        int(r.payload["event_id"])
        for r in records
        if r.kind == feed.EVENT_STORED and "event_id" in r.payload
    ]
    touched = {r.contact_id for r in records}
    merges = {
        uuid.UUID(r.payload["merged_contact_id"]): r.contact_id
        for r in records
        if r.kind == feed.CONTACT_MERGED and "merged_contact_id" in r.payload
    }
    follow_merges(session, merges)
    k = knobs(session, now)
    award_events(session, event_ids, active_rules(session, BEHAVIOR), k, now)
    lifecycle.advance(session, lifecycle.moves_for_events(session, event_ids), now, touched)
    rescore(session, k, active_rules(session, FIT), now, touched)
    promote_mqls(session, now, touched)


def follow_merges(session: Session, losers_to_winners: dict[uuid.UUID, uuid.UUID]) -> None:
    """Moves a merged contact's ledger and stage history to the contact it was merged into,
    and tells attribution, whose lead and MQL conversions come from that history."""
    for loser, winner in losers_to_winners.items():
        attribution.follow_merge(session, loser, winner)
        for model in (ScoreEntry, LifecycleTransition):
            session.execute(
                update(model).where(model.contact_id == loser).values(contact_id=winner)
            )
        session.execute(delete(ContactScore).where(ContactScore.contact_id == loser))


def forget_contacts(session: Session, contact_ids: Collection[uuid.UUID]) -> None:
    """Drops the ledger lines of erased contacts (the ledger holds no foreign key to cascade)."""
    if contact_ids:
        session.execute(delete(ScoreEntry).where(ScoreEntry.contact_id.in_(list(contact_ids))))


def subscribe() -> None:
    feed.subscribe(FEED_CONSUMER, handle_changes)
