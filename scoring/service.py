"""What the scoring API does: rules and settings (validated, versioned, rescored after
commit), a contact's score explained line by line, manual adjustments and stage moves, and
the predictive model's status and retraining."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Float, case, literal, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.models import Company, Contact, Event
from core.clock import clock
from core.db import dialect_insert
from core.models import table_of
from core.tasks import enqueue_after_commit
from scoring import lifecycle, scorer, tasks
from scoring.engine import DECAY, MANUAL, RULE, active_rules, current_score, decayed, rescore
from scoring.models import (
    ContactScore,
    PredictiveModel,
    ScoreEntry,
    ScoringRule,
    ScoringRuleVersion,
    ScoringSettings,
)
from scoring.predictive import training
from scoring.rules import FIT, RuleSpec, check_grade_thresholds, fit_condition, validate
from scoring.schemas import (
    AdjustmentCreate,
    FitFactor,
    LedgerLine,
    ModelStatus,
    ModelVersionRead,
    Prediction,
    RuleCreate,
    RuleTotal,
    RuleUpdate,
    ScoreBreakdown,
    SettingsUpdate,
    StageChange,
)

CAUSE_NAMES = {MANUAL: "manual adjustment", DECAY: "decay"}


def invalid(errors: dict[str, str]) -> ApiError:
    message = "invalid rule: " + "; ".join(f"{k} {v}" for k, v in errors.items())
    return ApiError(422, "invalid", message, errors)


def not_found(what: str, item_id: object) -> ApiError:
    return ApiError(404, "not_found", f"{what} {item_id} does not exist")


def list_rules(session: Session, kind: str | None) -> list[ScoringRule]:
    scorer.scoring_settings(session)
    query = select(ScoringRule).where(ScoringRule.deleted_at.is_(None))
    if kind is not None:
        query = query.where(ScoringRule.kind == kind)
    return list(session.scalars(query.order_by(ScoringRule.kind, ScoringRule.created_at)))


def get_rule(session: Session, rule_id: uuid.UUID) -> ScoringRule:
    rule = session.get(ScoringRule, rule_id)
    if rule is None or rule.deleted_at is not None:
        raise not_found("rule", rule_id)
    return rule


def spec_of(data: dict[str, Any]) -> RuleSpec:
    conditions = [
        {k: v for k, v in c.items() if v is not None or k == "value"}
        for c in data.get("conditions") or []
    ]
    return RuleSpec(
        kind=data["kind"],
        name=data["name"],
        points=data["points"],
        event_type=data.get("event_type"),
        event_name=data.get("event_name"),
        trait=data.get("trait"),
        conditions=conditions,
        daily_limit=data.get("daily_limit"),
        first_time_only=bool(data.get("first_time_only")),
        enabled=data.get("enabled", True),
    )


def create_rule(session: Session, body: RuleCreate, actor_key_id: uuid.UUID) -> ScoringRule:
    scorer.scoring_settings(session)
    spec = spec_of(body.model_dump())
    errors = validate(session, spec)
    if errors:
        raise invalid(errors)
    rule = scorer.add_rule(session, spec, actor_key_id, clock.now())
    enqueue_after_commit(session, tasks.rescore_rule, str(rule.id), rule.version)
    return rule


def update_rule(
    session: Session, rule_id: uuid.UUID, body: RuleUpdate, actor_key_id: uuid.UUID
) -> ScoringRule:
    rule = get_rule(session, rule_id)
    changes = body.model_dump(exclude_unset=True)
    required = ("name", "points", "conditions", "first_time_only", "enabled")
    nulls = {key: "may not be null" for key in required if key in changes and changes[key] is None}
    if nulls:
        raise invalid(nulls)
    if not changes:
        return rule
    current = scorer.rule_definition(rule)
    merged = {**current, **changes}
    if "conditions" in changes:
        merged["conditions"] = [c.model_dump() for c in body.conditions or []]
    spec = spec_of(merged)
    errors = validate(session, spec)
    if errors:
        raise invalid(errors)
    rule.name, rule.points = spec.name.strip(), float(spec.points)
    rule.event_type, rule.event_name, rule.trait = spec.event_type, spec.event_name, spec.trait
    rule.conditions = list(spec.conditions)
    rule.daily_limit, rule.first_time_only = spec.daily_limit, spec.first_time_only
    rule.enabled = spec.enabled
    rule.version += 1
    rule.updated_at = clock.now()
    session.flush()
    scorer.record_version(session, rule, "updated", actor_key_id)
    enqueue_after_commit(session, tasks.rescore_rule, str(rule.id), rule.version)
    return rule


def delete_rule(session: Session, rule_id: uuid.UUID, actor_key_id: uuid.UUID) -> None:
    rule = get_rule(session, rule_id)
    rule.deleted_at = clock.now()
    rule.enabled = False
    rule.version += 1
    session.flush()
    scorer.record_version(session, rule, "deleted", actor_key_id)
    enqueue_after_commit(session, tasks.rescore_rule, str(rule.id), rule.version)


def rule_versions(session: Session, rule_id: uuid.UUID) -> list[ScoringRuleVersion]:
    if session.get(ScoringRule, rule_id) is None:
        raise not_found("rule", rule_id)
    return list(
        session.scalars(
            select(ScoringRuleVersion)
            .where(ScoringRuleVersion.rule_id == rule_id)
            .order_by(ScoringRuleVersion.version)
        )
    )


def update_settings(session: Session, body: SettingsUpdate) -> ScoringSettings:
    settings = scorer.scoring_settings(session)
    changes = body.model_dump(exclude_unset=True)
    if "grade_thresholds" in changes:
        problem = check_grade_thresholds(changes["grade_thresholds"])
        if problem:
            raise ApiError(
                422, "invalid", f"grade_thresholds {problem}", {"grade_thresholds": problem}
            )
    nulls = [k for k, v in changes.items() if v is None]
    if nulls:
        raise ApiError(
            422, "invalid", f"{nulls[0]} may not be null", {k: "may not be null" for k in nulls}
        )
    rescore_needed = any(
        k in changes and changes[k] != getattr(settings, k)
        for k in ("half_life_days", "grade_thresholds")
    )
    mql_needed = any(k in changes for k in ("mql_threshold", "mql_min_grade"))
    for key, value in changes.items():
        setattr(settings, key, value)
    settings.updated_at = clock.now()
    session.flush()
    if rescore_needed:
        enqueue_after_commit(session, tasks.rescore_all)
    elif mql_needed:
        enqueue_after_commit(session, tasks.promote_mqls)
    return settings


def get_contact(session: Session, contact_id: uuid.UUID) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise not_found("contact", contact_id)
    return contact


def breakdown(session: Session, contact_id: uuid.UUID, limit: int) -> ScoreBreakdown:
    """The score explained: every ledger line (their points add up to the stored score, decay
    lines included; the decay since it was stored makes the score now), what each line is
    worth now, totals per rule, the fit rules met, and the predictive probability."""
    contact = get_contact(session, contact_id)
    settings = scorer.scoring_settings(session)
    now, half_life = clock.now(), settings.half_life_days
    row = session.get(ContactScore, contact_id)
    lines_query = (
        select(ScoreEntry, ScoringRule.name, ScoringRule.points, Event.name, Event.path)
        .outerjoin(ScoringRule, ScoringRule.id == ScoreEntry.rule_id)
        .outerjoin(Event, Event.id == ScoreEntry.event_id)
        .where(ScoreEntry.contact_id == contact_id)
    )
    totals: dict[tuple[Any, str], RuleTotal] = {}
    lines: list[LedgerLine] = []
    total_lines = 0
    for entry, rule_name, rule_points, event_name, path in session.execute(
        lines_query.order_by(ScoreEntry.occurred_at.desc(), ScoreEntry.id.desc())
    ):
        total_lines += 1
        points = rule_points if entry.cause == RULE else entry.points
        # A decay line records decay the other lines' `points_now` already show.
        worth = 0.0 if entry.cause == DECAY else decayed(points, entry.occurred_at, now, half_life)
        name = rule_name or CAUSE_NAMES.get(entry.cause, entry.cause)
        key = (entry.rule_id, entry.cause)
        if key not in totals:
            totals[key] = RuleTotal(
                rule_id=entry.rule_id, rule_name=name, cause=entry.cause, lines=0, points=0,
                points_now=0,
            )  # fmt: skip
        totals[key].lines += 1
        totals[key].points += points
        totals[key].points_now += worth
        if len(lines) < limit:
            lines.append(
                LedgerLine(
                    id=entry.id,
                    cause=entry.cause,
                    rule_id=entry.rule_id,
                    rule_name=name,
                    rule_version=entry.rule_version,
                    event_id=entry.event_id,
                    event=event_name or path,
                    points=points,
                    points_when_recorded=entry.points,
                    points_now=worth,
                    occurred_at=entry.occurred_at,
                    recorded_at=entry.recorded_at,
                    note=entry.note,
                )
            )
    fit_rules = active_rules(session, FIT)
    fit: list[FitFactor] = []
    if fit_rules:
        met = session.execute(
            select(
                *[
                    case((fit_condition(r.trait or "", r.conditions), literal(1.0)), else_=0.0)
                    .cast(Float)
                    .label(f"r{i}")
                    for i, r in enumerate(fit_rules)
                ]
            )
            .select_from(Contact)
            .outerjoin(Company, Company.id == Contact.company_id)
            .where(Contact.id == contact_id)
        ).one()
        fit = [
            FitFactor(rule_id=r.id, rule_name=r.name, trait=r.trait or "", points=r.points)
            for r, hit in zip(fit_rules, met, strict=True)
            if hit
        ]
    score = current_score(row, now, half_life) if row else 0.0
    model = training.active(session)
    using_model = model is not None and row is not None and row.probability is not None
    return ScoreBreakdown(
        contact_id=contact.id,
        lifecycle_stage=contact.lifecycle_stage,
        score=score,
        stored_score=row.behavior_score if row else 0.0,
        stored_as_of=row.behavior_as_of if row else None,
        decay_since_stored=score - row.behavior_score if row else 0.0,
        half_life_days=half_life,
        grade=row.grade if row else "F",
        fit_points=row.fit_points if row else 0.0,
        fit=fit,
        by_rule=sorted(totals.values(), key=lambda t: -abs(t.points_now)),
        lines=lines,
        lines_shown=len(lines),
        lines_total=total_lines,
        prediction=Prediction(
            using="model" if using_model else "rule_score",
            probability=row.probability if using_model and row else None,
            model_version=row.model_version if using_model and row else None,
            factors=list(row.factors) if using_model and row else [],
            predicted_at=row.predicted_at if using_model and row else None,
        ),
    )


def adjust_score(
    session: Session,
    contact_id: uuid.UUID,
    body: AdjustmentCreate,
    actor_key_id: uuid.UUID | None,
    idempotency_key: str | None = None,
) -> ScoreEntry:
    """A manual adjustment: a ledger line of its own that decays like any other. Under an
    idempotency key (a journey step's) a second adjustment returns the first line and
    changes nothing."""
    get_contact(session, contact_id)
    now = clock.now()
    line = {
        "contact_id": contact_id,
        "cause": MANUAL,
        "points": body.points,
        "occurred_at": now,
        "recorded_at": now,
        "note": body.note,
        "actor_key_id": actor_key_id,
        "idempotency_key": idempotency_key,
    }
    entry_id = session.scalar(
        dialect_insert(session, table_of(ScoreEntry))
        .values(line)
        .on_conflict_do_nothing(
            index_elements=["idempotency_key"],
            index_where=ScoreEntry.idempotency_key.is_not(None),
        )
        .returning(ScoreEntry.id)
    )
    if entry_id is None:
        return session.scalars(
            select(ScoreEntry).where(ScoreEntry.idempotency_key == idempotency_key)
        ).one()
    entry = session.get_one(ScoreEntry, entry_id)
    rescore(session, scorer.knobs(session, now), active_rules(session, FIT), now, [contact_id])
    scorer.promote_mqls(session, now, [contact_id])
    return entry


def change_stage(
    session: Session, contact_id: uuid.UUID, body: StageChange, actor_key_id: uuid.UUID
) -> Any:
    contact = get_contact(session, contact_id)
    if contact.lifecycle_stage == body.stage:
        raise ApiError(
            409, "conflict", f"the contact is already in stage {body.stage}", {"stage": "unchanged"}
        )
    return lifecycle.set_stage(session, contact, body.stage, body.reason, clock.now(), actor_key_id)


def lifecycle_history(session: Session, contact_id: uuid.UUID) -> list[Any]:
    get_contact(session, contact_id)
    return lifecycle.history(session, contact_id)


def positive_outcomes(session: Session) -> int:
    return len(training.outcomes(session))


def model_status(session: Session) -> ModelStatus:
    settings = scorer.scoring_settings(session)
    active = training.active(session)
    positives = positive_outcomes(session)
    if active is not None:
        reason = f"model v{active.version} is active (holdout AUC {active.metrics['roc_auc']})"
    elif positives < settings.min_positives:
        reason = (
            f"cold start: {positives} contacts have become opportunities; the model needs at "
            f"least {settings.min_positives}, so the rule score is used"
        )
    else:
        reason = "no model has been trained yet; the rule score is used until one is"
    return ModelStatus(
        using="model" if active is not None else "rule_score",
        reason=reason,
        positive_outcomes=positives,
        min_positives=settings.min_positives,
        label_days=settings.label_days,
        active=ModelVersionRead.model_validate(active) if active else None,
    )


def model_versions(session: Session) -> list[PredictiveModel]:
    return list(session.scalars(select(PredictiveModel).order_by(PredictiveModel.version.desc())))


def retrain(session: Session) -> PredictiveModel:
    try:
        model = training.retrain(session)
    except training.TrainingError as error:
        raise ApiError(422, error.code, error.message) from error
    if model.status == "active":
        enqueue_after_commit(session, tasks.predict_all)
    return model
