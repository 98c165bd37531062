"""The predictive score: calibration against known probabilities, training on a simulated
history with a time-based holdout, cold start, replace-only-if-not-worse, signed artifacts."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sqlalchemy import delete, func, select, update

from capture.models import Event, Visit
from core.clock import clock
from core.db import session_scope
from scoring.models import ContactScore, PredictiveModel, ScoringSettings
from scoring.predictive import features, serving, training
from scoring.predictive.model import (
    ArtifactOutdated,
    ArtifactTampered,
    ScoringModel,
    calibration_error,
    dump,
    load,
)
from scoring.simulation import simulate

END = datetime(2026, 6, 1, tzinfo=UTC)


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Feature rows whose true probability is a known logistic function of three of them."""
    rng = random.Random(seed)
    values = np.empty((rows, len(features.FEATURES)), dtype=object)
    probabilities = np.empty(rows)
    raw = []
    logged = {c.name for c in features.COUNTS} | {"visits", "recent_activity"}
    for i in range(rows):
        pricing = rng.choice([0, 0, 0, 1, 2, 4])
        forms = rng.choice([0, 0, 0, 1])
        title = rng.choice(["CTO", "IT经理", "工程师", "unknown"])
        logit = -4 + 1.2 * math.log1p(pricing) + 1.5 * forms + (1.0 if title == "CTO" else 0)
        probabilities[i] = 1 / (1 + math.exp(-logit))
        readable: dict = {name: 0 for name in features.NUMERIC}
        readable.update(
            pricing_views_7d=pricing,
            forms=forms,
            visits=rng.randint(1, 4),
            days_since_last_activity=rng.uniform(0, 90),
            days_since_first_seen=rng.uniform(0, 180),
            identified=1,
            company_size=math.nan,
            title=title,
            title_group=features.title_group(None if title == "unknown" else title),
            industry="制造业",
            size_band="unknown",
            province="上海",
            city="上海",
            email_kind="company",
            first_channel=rng.choice(["paid_search", "direct"]),
        )
        numeric = [
            math.log1p(readable[name])
            if name in logged or name == "days_since_first_seen"
            else readable[name]
            for name in features.NUMERIC
        ]
        values[i] = [*numeric, *(readable[name] for name in features.CATEGORICAL)]
        raw.append(readable)
    labels = (np.array([rng.random() for _ in range(rows)]) < probabilities).astype(int)
    return values, labels, probabilities, raw


def test_the_model_is_calibrated_on_data_with_known_probabilities() -> None:
    values, labels, _, _ = synthetic(20_000, seed=1)
    model = ScoringModel(values, labels)
    fresh, fresh_labels, truth, raw = synthetic(20_000, seed=2)
    predicted = model.predict(fresh)
    assert np.allclose(
        predicted, model.calibrated.predict_proba(model.prepare.transform(fresh))[:, 1]
    )
    assert calibration_error(fresh_labels, predicted) < 0.02
    assert np.abs(predicted - truth).mean() < 0.02
    ceiling = roc_auc_score(fresh_labels, truth)
    assert roc_auc_score(fresh_labels, predicted) > ceiling - 0.01

    readable = {key: np.array([row[key] for row in raw]) for key in raw[0]}
    frame = features.FeatureFrame(list(range(len(raw))), fresh, readable)  # type: ignore[arg-type]
    _, factors = model.score(frame)
    hot = max(range(len(raw)), key=lambda i: truth[i])
    assert any("pricing" in words for words in factors[hot])
    assert any("submitted 1 forms" in words for words in factors[hot])
    assert any("job title CTO" in words for words in factors[hot])


def test_training_with_no_history_is_refused(backend: object) -> None:
    clock.freeze(END)
    with session_scope() as session:
        with pytest.raises(training.TrainingError) as refused:
            training.retrain(session)
        assert refused.value.code == "no_training_data"
        assert session.scalar(select(func.count()).select_from(PredictiveModel)) == 0


def test_cold_start_keeps_the_rule_score(backend: object) -> None:
    clock.freeze(END)
    simulate(400, 120, seed=2, end=END, progress=False)
    with session_scope() as session:
        with pytest.raises(training.TrainingError) as refused:
            training.retrain(session)
        assert refused.value.code == "cold_start"
        assert "at least 100 are needed" in refused.value.message
        assert session.scalar(select(func.count()).select_from(PredictiveModel)) == 0
        assert serving.predict(session) == 0
        assert (
            session.scalar(select(func.count()).where(ContactScore.probability.is_not(None))) == 0
        )


def test_features_read_nothing_from_the_prediction_cutoff_on(backend: object) -> None:
    """Features at a cutoff are the same after every event and visit from the cutoff on is
    deleted, and traits stay hidden for people who identified later."""
    clock.freeze(END)
    simulate(300, 60, seed=3, end=END, progress=False)
    cutoff = END - timedelta(days=20)
    with session_scope() as session:
        before = features.build(session, cutoff, historical=True)
        identified_later = set(
            session.scalars(
                select(Event.contact_id)
                .where(Event.type == "identify")
                .group_by(Event.contact_id)
                .having(func.min(Event.timestamp) >= cutoff)
            )
        )
        events_later = session.execute(delete(Event).where(Event.timestamp >= cutoff)).rowcount
        visits_later = session.execute(delete(Visit).where(Visit.started_at >= cutoff)).rowcount
        after = features.build(session, cutoff, historical=True)
    assert identified_later and events_later > 500 and visits_later > 100
    assert after.contact_ids == before.contact_ids
    assert (after.values == before.values).all()
    hidden = [i for i, c in enumerate(before.contact_ids) if c in identified_later]
    assert hidden
    for name in ("title", "industry", "size_band", "city", "email_kind"):
        assert set(before.readable[name][hidden]) == {"unknown"}
    assert not before.readable["identified"][hidden].any()


class Guessing(ScoringModel):
    """A model no better than chance, to show a worse model never replaces a better one."""

    def predict(self, values: np.ndarray) -> np.ndarray:
        return np.random.default_rng(0).random(len(values))


def test_a_model_trained_on_history_beats_the_rule_score(
    pg_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock.freeze(END)
    simulate(6000, 180, seed=5, end=END, progress=False)
    with session_scope() as session:
        session.execute(update(ScoringSettings).values(min_positives=50))
        first = training.retrain(session)
        assert first.status == "active" and first.version == 1
        report = first.metrics
        assert report["roc_auc"] > report["rule_score_roc_auc"]
        assert report["top_decile_lift"] > 3
        assert report["calibration_error"] < 0.03
        assert report["label"].startswith("became an opportunity or customer within 30 days")
        truth = report["ground_truth"]
        assert truth["contacts"] == first.holdout_rows and truth["positives"] > 0
        assert truth["true_probability_roc_auc"] > truth["rule_score_roc_auc"]
        assert first.train_positives >= 50 and first.holdout_positives >= 10
        assert first.holdout_cutoff == END.replace(month=5, day=2)

        assert serving.predict(session) == session.scalar(
            select(func.count()).select_from(ContactScore)
        )
        hottest = session.scalars(
            select(ContactScore).order_by(ContactScore.probability.desc()).limit(20)
        ).all()
        assert all(row.model_version == 1 and row.factors for row in hottest)
        assert all(0 <= row.probability <= 1 for row in hottest if row.probability is not None)

        second = training.retrain(session)
        assert second.status == "active" and "not worse" in second.reason
        assert session.get(PredictiveModel, 1).status == "retired"  # type: ignore[union-attr]

    monkeypatch.setattr(training, "ScoringModel", Guessing)
    with session_scope() as session:
        worse = training.retrain(session)
        assert worse.status == "rejected" and "worse than v2" in worse.reason
        assert training.active(session).version == 2  # type: ignore[union-attr]


def test_a_tampered_artifact_is_never_loaded(backend: object) -> None:
    values, labels, _, _ = synthetic(3000, seed=3)
    artifact, signature = dump(ScoringModel(values, labels), "secret")
    assert isinstance(load(artifact, signature, "secret"), ScoringModel)
    with pytest.raises(ArtifactTampered):
        load(artifact + b" ", signature, "secret")
    with pytest.raises(ArtifactTampered):
        load(artifact, signature, "another secret")
    outdated = ScoringModel(values, labels)
    outdated.format = 1
    with pytest.raises(ArtifactOutdated):
        load(*dump(outdated, "secret"), "secret")
