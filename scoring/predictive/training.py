"""Training on history: snapshots at past cutoffs labelled "became an opportunity (or customer)
within N days", a time-based holdout after them, cold start, and replace-only-if-not-worse."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from capture.models import Event
from core.clock import clock
from core.settings import get_settings
from scoring.engine import decayed_points
from scoring.models import (
    LifecycleTransition,
    PredictiveModel,
    ScoreEntry,
    ScoringRule,
    SimulatedContact,
)
from scoring.predictive import features
from scoring.predictive.model import (
    ALGORITHM,
    ArtifactOutdated,
    ScoringModel,
    dump,
    load,
    metrics,
)
from scoring.scorer import scoring_settings

OUTCOME_STAGES = ("opportunity", "customer")
MAX_TRAINING_CUTOFFS = 6
# Snapshots every two weeks: with a long label window their windows overlap, which is fine for
# training and gives several times the rows of back-to-back windows.
TRAINING_CUTOFF_STEP_DAYS = 14
MIN_HOLDOUT_POSITIVES = 10


class TrainingError(Exception):
    """Training cannot run on this data; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Snapshot:
    frame: features.FeatureFrame
    labels: np.ndarray


def outcomes(session: Session) -> dict[uuid.UUID, datetime]:
    """When each contact first became an opportunity or customer."""
    return dict(
        session.execute(
            select(LifecycleTransition.contact_id, func.min(LifecycleTransition.occurred_at))
            .where(LifecycleTransition.to_stage.in_(OUTCOME_STAGES))
            .group_by(LifecycleTransition.contact_id)
        ).all()
    )


def snapshot(
    session: Session, cutoff: datetime, label_days: int, reached: dict[uuid.UUID, datetime]
) -> Snapshot:
    """Contacts still open at `cutoff`, labelled by whether they got there within the window."""
    frame = features.build(session, cutoff, historical=True)
    end = cutoff + timedelta(days=label_days)
    keep = [i for i, cid in enumerate(frame.contact_ids) if reached.get(cid, end) >= cutoff]
    labels = np.array(
        [1 if reached.get(frame.contact_ids[i], end) < end else 0 for i in keep], dtype=int
    )
    return Snapshot(frame.take(keep), labels)


def cutoffs(session: Session, now: datetime, label_days: int) -> tuple[datetime, list[datetime]]:
    """The holdout cutoff (its label window ends now) and the training cutoffs before it, whose
    label windows all end by the holdout cutoff."""
    holdout = now - timedelta(days=label_days)
    first_event = session.scalar(select(func.min(Event.timestamp)))
    step = timedelta(days=TRAINING_CUTOFF_STEP_DAYS)
    training: list[datetime] = []
    cutoff = holdout - timedelta(days=label_days)
    while (
        first_event is not None
        and cutoff > first_event + timedelta(days=7)
        and len(training) < MAX_TRAINING_CUTOFFS
    ):
        training.append(cutoff)
        cutoff -= step
    return holdout, training


def rule_scores_at(session: Session, at: datetime, contact_ids: list[uuid.UUID]) -> np.ndarray:
    """Each contact's behavioural rule score as it stood at `at`, replayed from the ledger."""
    half_life = scoring_settings(session).half_life_days
    totals = dict(
        session.execute(
            select(
                ScoreEntry.contact_id,
                func.sum(decayed_points(at, half_life)),
            )
            .outerjoin(ScoringRule, ScoringRule.id == ScoreEntry.rule_id)
            .where(ScoreEntry.occurred_at < at)
            .group_by(ScoreEntry.contact_id)
        ).all()
    )
    return np.array([float(totals.get(cid) or 0.0) for cid in contact_ids])


def ground_truth_report(
    session: Session,
    holdout: Snapshot,
    cutoff: datetime,
    probabilities: np.ndarray,
    rule_scores: np.ndarray,
) -> dict[str, Any] | None:
    """On a simulated population, the holdout AUCs of the model, the rule score and the true
    probabilities (the ceiling) against the ground-truth outcome: an opportunity at any time
    after the cutoff, even after the data ends. None when the contacts were not simulated."""
    truth = {
        row.contact_id: row
        for row in session.execute(
            select(
                SimulatedContact.contact_id,
                SimulatedContact.true_probability,
                SimulatedContact.converted_at,
            ).where(SimulatedContact.contact_id.is_not(None))
        )
    }
    known = [i for i, cid in enumerate(holdout.frame.contact_ids) if cid in truth]
    if not known:
        return None
    rows = [truth[holdout.frame.contact_ids[i]] for i in known]
    outcome = np.array([r.converted_at is not None and r.converted_at > cutoff for r in rows])
    if outcome.all() or not outcome.any():
        return None
    true_probabilities = np.array([r.true_probability for r in rows])

    def auc(labels: np.ndarray, scores: np.ndarray) -> float:
        return round(float(roc_auc_score(labels, scores)), 4)

    return {
        "outcome": "became an opportunity at any time after the holdout cutoff (simulated)",
        "contacts": len(known),
        "positives": int(outcome.sum()),
        "model_roc_auc": auc(outcome, probabilities[known]),
        "rule_score_roc_auc": auc(outcome, rule_scores[known]),
        "true_probability_roc_auc": auc(outcome, true_probabilities),
        "true_probability_roc_auc_on_label": auc(holdout.labels[known], true_probabilities),
    }


def loadable(row: PredictiveModel | None, secret: str) -> ScoringModel | None:
    """The model a stored version holds, or None when there is none or it is outdated."""
    if row is None or row.artifact is None or row.artifact_signature is None:
        return None
    try:
        return load(row.artifact, row.artifact_signature, secret)
    except ArtifactOutdated:
        return None


def next_version(session: Session) -> int:
    return int(session.scalar(select(func.max(PredictiveModel.version))) or 0) + 1


def active(session: Session) -> PredictiveModel | None:
    return session.scalar(select(PredictiveModel).where(PredictiveModel.status == "active"))


def retrain(session: Session, now: datetime | None = None) -> PredictiveModel:
    """Trains, evaluates on the holdout and records a new version: active when it is not worse
    than the current model on the same holdout, else rejected. Raises TrainingError (and
    records nothing) when there is no data or too few positive outcomes (cold start)."""
    now = now or clock.now()
    settings = scoring_settings(session)
    label_days = settings.label_days
    holdout_cutoff, training_cutoffs = cutoffs(session, now, label_days)
    reached = outcomes(session)
    train = [snapshot(session, c, label_days, reached) for c in training_cutoffs]
    rows = sum(len(s.labels) for s in train)
    if rows == 0:
        raise TrainingError(
            "no_training_data",
            f"there is no history to train on: training needs contacts seen more than "
            f"{2 * label_days} days ago (two label windows of {label_days} days)",
        )
    history = features.FeatureFrame.concatenate([s.frame for s in train])
    labels = np.concatenate([s.labels for s in train])
    positives = int(labels.sum())
    if positives < settings.min_positives:
        raise TrainingError(
            "cold_start",
            f"only {positives} contacts became opportunities within {label_days} days in the "
            f"training history; at least {settings.min_positives} are needed, so the rule score "
            "stays in use",
        )
    holdout = snapshot(session, holdout_cutoff, label_days, reached)
    holdout_positives = int(holdout.labels.sum())
    if holdout_positives < MIN_HOLDOUT_POSITIVES or holdout_positives == len(holdout.labels):
        raise TrainingError(
            "no_holdout_outcomes",
            f"the holdout (contacts open at {holdout_cutoff:%Y-%m-%d}) has {holdout_positives} "
            f"positive outcomes; at least {MIN_HOLDOUT_POSITIVES} (and some negatives) are needed",
        )

    model = ScoringModel(history, labels)
    probabilities = model.predict(holdout.frame)
    report = metrics(holdout.labels, probabilities)
    rule_scores = rule_scores_at(session, holdout_cutoff, holdout.frame.contact_ids)
    report["rule_score_roc_auc"] = round(float(roc_auc_score(holdout.labels, rule_scores)), 4)
    report["calibration_method"] = model.method
    report["label"] = (
        f"became an opportunity or customer within {label_days} days of the cutoff; holdout: "
        f"contacts open at {holdout_cutoff:%Y-%m-%d}"
    )
    truth = ground_truth_report(session, holdout, holdout_cutoff, probabilities, rule_scores)
    if truth is not None:
        report["ground_truth"] = truth

    secret = get_settings().secret_key
    current = active(session)
    status, reason = "active", "first model: replaces the rule score"
    previous = loadable(current, secret)
    if current is not None and previous is None:
        reason = f"v{current.version} was trained by an older version and cannot be compared"
        current.status = "retired"
    elif current is not None and previous is not None:
        previous_auc = float(roc_auc_score(holdout.labels, previous.predict(holdout.frame)))
        report["previous_roc_auc"] = round(previous_auc, 4)
        if report["roc_auc"] >= round(previous_auc, 4):
            reason = (
                f"AUC {report['roc_auc']} is not worse than v{current.version}'s {previous_auc:.4f}"
            )
            current.status = "retired"
        else:
            status = "rejected"
            reason = (
                f"AUC {report['roc_auc']} is worse than v{current.version}'s {previous_auc:.4f}"
            )
    artifact, signature = dump(model, secret)
    row = PredictiveModel(
        version=next_version(session),
        status=status,
        reason=reason,
        algorithm=ALGORITHM,
        label_days=label_days,
        trained_at=now,
        holdout_cutoff=holdout_cutoff,
        train_rows=rows,
        train_positives=positives,
        holdout_rows=len(holdout.labels),
        holdout_positives=holdout_positives,
        metrics=report,
        feature_names=list(features.FEATURES),
        artifact=artifact,
        artifact_signature=signature,
    )
    session.flush()
    session.add(row)
    session.flush()
    return row
