"""Scoring HTTP under /api/v1/scoring: rules, settings, a contact's score and lifecycle,
and the predictive model. Marketers change things; reps and managers may read scores."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from api.deps import MarketerKey, RequireRole, SessionDep
from core.keys import ApiKey, Role
from scoring import scorer, service
from scoring.schemas import (
    AdjustmentCreate,
    LedgerLine,
    ModelStatus,
    ModelVersionRead,
    RuleCreate,
    RuleRead,
    RuleUpdate,
    RuleVersionRead,
    ScoreBreakdown,
    SettingsRead,
    SettingsUpdate,
    StageChange,
    TransitionRead,
)

router = APIRouter(prefix="/api/v1/scoring", tags=["scoring"])
ReaderKey = Annotated[ApiKey, Depends(RequireRole(Role.marketer, Role.manager, Role.rep))]


@router.get("/rules", response_model=list[RuleRead])
def list_rules(
    session: SessionDep, _key: MarketerKey, kind: Literal["behavior", "fit"] | None = None
) -> list:
    return service.list_rules(session, kind)


@router.post("/rules", response_model=RuleRead, status_code=201)
def create_rule(body: RuleCreate, session: SessionDep, key: MarketerKey) -> object:
    """Creates a rule; every contact is rescored with it in the background."""
    return service.create_rule(session, body, key.id)


@router.get("/rules/{rule_id}", response_model=RuleRead)
def get_rule(rule_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> object:
    return service.get_rule(session, rule_id)


@router.patch("/rules/{rule_id}", response_model=RuleRead)
def update_rule(
    rule_id: uuid.UUID, body: RuleUpdate, session: SessionDep, key: MarketerKey
) -> object:
    """Changes a rule (a new version); every contact is rescored in the background."""
    return service.update_rule(session, rule_id, body, key.id)


@router.delete("/rules/{rule_id}", status_code=204)
def delete_rule(rule_id: uuid.UUID, session: SessionDep, key: MarketerKey) -> Response:
    service.delete_rule(session, rule_id, key.id)
    return Response(status_code=204)


@router.get("/rules/{rule_id}/versions", response_model=list[RuleVersionRead])
def rule_versions(rule_id: uuid.UUID, session: SessionDep, _key: MarketerKey) -> list:
    return service.rule_versions(session, rule_id)


@router.get("/settings", response_model=SettingsRead)
def get_settings(session: SessionDep, _key: MarketerKey) -> object:
    return scorer.scoring_settings(session)


@router.patch("/settings", response_model=SettingsRead)
def update_settings(body: SettingsUpdate, session: SessionDep, _key: MarketerKey) -> object:
    """A new half-life or grade scale rescores everyone; new MQL thresholds re-check MQLs."""
    return service.update_settings(session, body)


@router.get("/contacts/{contact_id}/score", response_model=ScoreBreakdown)
def score_breakdown(
    contact_id: uuid.UUID,
    session: SessionDep,
    _key: ReaderKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ScoreBreakdown:
    """The score, grade, stage and probability, explained line by line."""
    return service.breakdown(session, contact_id, limit)


@router.post("/contacts/{contact_id}/adjustments", response_model=LedgerLine, status_code=201)
def adjust_score(
    contact_id: uuid.UUID, body: AdjustmentCreate, session: SessionDep, key: MarketerKey
) -> LedgerLine:
    entry = service.adjust_score(session, contact_id, body, key.id)
    return LedgerLine(
        id=entry.id,
        cause=entry.cause,
        rule_id=None,
        rule_name="manual adjustment",
        rule_version=None,
        event_id=None,
        event=None,
        points=entry.points,
        points_when_recorded=entry.points,
        points_now=entry.points,
        occurred_at=entry.occurred_at,
        recorded_at=entry.recorded_at,
        note=entry.note,
    )


@router.get("/contacts/{contact_id}/lifecycle", response_model=list[TransitionRead])
def lifecycle_history(contact_id: uuid.UUID, session: SessionDep, _key: ReaderKey) -> list:
    return service.lifecycle_history(session, contact_id)


@router.post("/contacts/{contact_id}/lifecycle", response_model=TransitionRead, status_code=201)
def change_stage(
    contact_id: uuid.UUID, body: StageChange, session: SessionDep, key: MarketerKey
) -> object:
    """An explicit stage move, in any direction, with a reason."""
    return service.change_stage(session, contact_id, body, key.id)


@router.get("/model", response_model=ModelStatus)
def model_status(session: SessionDep, _key: ReaderKey) -> ModelStatus:
    """Whether the model or the rule score is in use, and why."""
    return service.model_status(session)


@router.get("/model/versions", response_model=list[ModelVersionRead])
def model_versions(session: SessionDep, _key: MarketerKey) -> list:
    return service.model_versions(session)


@router.post("/model/retrain", response_model=ModelVersionRead, status_code=201)
def retrain(session: SessionDep, _key: MarketerKey) -> object:
    """Trains now; the new version replaces the active one only if it is not worse."""
    return service.retrain(session)
