"""Scoring's Celery tasks (thin: ids in, service out) and its change-feed subscription."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from core import feed
from core.clock import clock
from core.tasks import task
from scoring import scorer
from scoring.predictive import serving, training

log = logging.getLogger(__name__)


@task("scoring.rescore_rule", queue="default", max_retries=3)
def rescore_rule(session: Session, rule_id: str, version: int) -> bool:
    return scorer.rescore_rule(session, uuid.UUID(rule_id), version)


@task("scoring.rescore_all", queue="default", max_retries=3)
def rescore_all(session: Session) -> None:
    scorer.rescore_all(session)


@task("scoring.promote_mqls", queue="default", max_retries=3)
def promote_mqls(session: Session) -> int:
    return len(scorer.promote_mqls(session, clock.now()))


@task("scoring.decay_scores", queue="default", max_retries=3)
def decay_scores(session: Session) -> int:
    return scorer.decay_scores(session, clock.now())


@task("scoring.predict_all", queue="default", max_retries=3)
def predict_all(session: Session) -> int:
    return serving.predict(session)


@task("scoring.retrain", queue="default", max_retries=0)
def retrain(session: Session) -> str:
    """The scheduled retrain: a cold start or thin history is logged, not retried."""
    try:
        model = training.retrain(session)
    except training.TrainingError as error:
        log.info("predictive model not retrained: %s", error.message)
        return error.code
    if model.status == "active":
        serving.predict(session)
    return model.status


def refresh_predictions(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    """Contacts that just did something get a fresh probability (when a model is active)."""
    serving.predict(session, {record.contact_id for record in records})


scorer.subscribe()
feed.subscribe("scoring_predictions", refresh_predictions)
