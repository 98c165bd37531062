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
from scoring.models import DEFAULT_LABEL_DAYS, ContactScore, PredictiveModel, ScoringSettings
from scoring.predictive import features, serving, training
from scoring.predictive.model import (
    CANDIDATE_FACTORS,
    TOP_FACTORS,
    ArtifactOutdated,
    ArtifactTampered,
    ScoringModel,
    calibration_error,
    dump,
    load,
    top_factors,
)
from scoring.simulation import simulate

END = datetime(2026, 6, 1, tzinfo=UTC)


def synthetic(rows: int, seed: int) -> tuple[features.FeatureFrame, np.ndarray, np.ndarray]:
    """Feature rows whose true probability is a known logistic function of three of them."""
    rng = random.Random(seed)
    numeric = np.empty((rows, len(features.NUMERIC)))
    categorical = np.empty((rows, len(features.CATEGORICAL)), dtype=object)
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
        numeric[i] = [
            math.log1p(readable[name])
            if name in logged or name == "days_since_first_seen"
            else readable[name]
            for name in features.NUMERIC
        ]
        categorical[i] = [readable[name] for name in features.CATEGORICAL]
        raw.append(readable)
    labels = (np.array([rng.random() for _ in range(rows)]) < probabilities).astype(int)
    readable_columns = {key: np.array([row[key] for row in raw]) for key in raw[0]}
    frame = features.FeatureFrame(list(range(rows)), numeric, categorical, readable_columns)  # type: ignore[arg-type]
    return frame, labels, probabilities


def test_the_model_is_calibrated_on_data_with_known_probabilities() -> None:
    history, labels, _ = synthetic(20_000, seed=1)
    model = ScoringModel(history, labels)
    fresh, fresh_labels, truth = synthetic(20_000, seed=2)
    predicted = model.predict(fresh)
    assert np.allclose(predicted, model.calibrated.predict_proba(model.prepared(fresh))[:, 1])
    assert calibration_error(fresh_labels, predicted) < 0.02
    assert np.abs(predicted - truth).mean() < 0.02
    ceiling = roc_auc_score(fresh_labels, truth)
    assert roc_auc_score(fresh_labels, predicted) > ceiling - 0.01

    _, factors = model.score(fresh)
    hot = max(range(len(fresh)), key=lambda i: truth[i])
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
    simulate(400, 180, seed=2, end=END, progress=False)
    with session_scope() as session:
        with pytest.raises(training.TrainingError) as refused:
            training.retrain(session)
        assert refused.value.code == "cold_start"
        assert "at least 100 are needed" in refused.value.message
        assert f"within {DEFAULT_LABEL_DAYS} days" in refused.value.message
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
    assert (after.numeric == before.numeric).all()
    assert (after.categorical == before.categorical).all()
    hidden = [i for i, c in enumerate(before.contact_ids) if c in identified_later]
    assert hidden
    for name in ("title", "industry", "size_band", "city", "email_kind"):
        assert set(before.readable[name][hidden]) == {"unknown"}
    assert not before.readable["identified"][hidden].any()


class Guessing(ScoringModel):
    """A model no better than chance, to show a worse model never replaces a better one."""

    def predict(self, frame: features.FeatureFrame) -> np.ndarray:
        return np.random.default_rng(0).random(len(frame))


def test_a_model_trained_on_history_beats_the_rule_score(
    pg_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock.freeze(END)
    simulate(6000, 180, seed=5, end=END, progress=False)
    with session_scope() as session:
        # A 30-day label (not the default 60) gives this small history enough training windows.
        session.execute(update(ScoringSettings).values(min_positives=50, label_days=30))
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
        assert first.holdout_cutoff == END - timedelta(days=30)

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
    history, labels, _ = synthetic(3000, seed=3)
    artifact, signature = dump(ScoringModel(history, labels), "secret")
    assert isinstance(load(artifact, signature, "secret"), ScoringModel)
    with pytest.raises(ArtifactTampered):
        load(artifact + b" ", signature, "secret")
    with pytest.raises(ArtifactTampered):
        load(artifact, signature, "another secret")
    outdated = ScoringModel(history, labels)
    outdated.format = 1
    with pytest.raises(ArtifactOutdated):
        load(*dump(outdated, "secret"), "secret")


def reference_factors(frame: features.FeatureFrame, contributions: np.ndarray) -> list[list[str]]:
    """Top factors row by row, as first written: the CANDIDATE_FACTORS features lifting a row
    most, in order, worded one at a time, each distinct phrase once, at most TOP_FACTORS."""
    factors = []
    for row, lifts in enumerate(contributions):
        words: list[str] = []
        for index in np.argsort(-lifts, kind="stable")[:CANDIDATE_FACTORS]:
            phrase = features.describe(features.FEATURES[index], frame.readable, row)
            if lifts[index] > 0.01 and phrase and phrase not in words and len(words) < TOP_FACTORS:
                words.append(phrase)
        factors.append(words)
    return factors


def test_factors_worded_in_bulk_match_wording_row_by_row() -> None:
    history, labels, _ = synthetic(5000, seed=4)
    model = ScoringModel(history, labels)
    fresh, _, _ = synthetic(2000, seed=5)
    sizes = np.random.default_rng(5).choice([np.nan, 30, 250, 250, 4000], len(fresh))
    fresh.readable["company_size"] = sizes
    _, contributions = model.explain(fresh)
    factors = top_factors(fresh, contributions)
    assert factors == reference_factors(fresh, contributions)
    assert sum(map(len, factors)) > 2000
    # Title and title group word themselves alike: the phrase is given once.
    assert all(len(set(words)) == len(words) for words in factors)


def test_feature_words_a_rep_reads() -> None:
    readable = {
        "pricing_views_7d": np.array([3.0, 0.0]),
        "visits": np.array([4.0, 1.0]),
        "days_since_last_activity": np.array([0.4, 12.6]),
        "company_size": np.array([250.0, np.nan]),
        "title": np.array(["CTO", "unknown"], dtype=object),
        "email_kind": np.array(["free", "unknown"], dtype=object),
        "came_from_referral": np.array([True, False]),
    }
    rows = np.array([0, 1])

    def words(feature: str) -> list[str | None]:
        return features.describe_many(feature, readable, rows)

    assert words("pricing_views_7d") == ["visited pricing 3 times this week", None]
    assert words("visits") == ["came back 3 times", None]
    assert words("days_since_last_activity") == ["active today", "last active 13 days ago"]
    assert words("size_band") == ["company size 200–499", None]
    assert words("title_group") == ["job title CTO", None]
    assert words("email_kind") == ["uses a free email address", None]
    assert words("came_from_referral") == ["came from a referral", None]


def test_prediction_columns_arrive_the_same_as_rows(pg_backend: object) -> None:
    """On PostgreSQL the feature query's columns come back as arrays; they hold exactly what
    the rows hold."""
    clock.freeze(END)
    simulate(300, 60, seed=6, end=END, progress=False)
    with session_scope() as session:
        query = features.feature_query(END, historical=False)
        columns = features.fetch_columns(session, query)
        rows = session.execute(query).all()
    assert len(rows) == len(columns["contact_id"]) == 300
    by_id = {row.contact_id: row for row in rows}
    for i, contact_id in enumerate(columns["contact_id"]):
        assert tuple(columns[name][i] for name in features.query_names()) == tuple(
            by_id[contact_id]
        )


def test_factors_with_quotes_and_backslashes_survive_the_copy(pg_backend: object) -> None:
    clock.freeze(END)
    simulate(300, 60, seed=7, end=END, progress=False)
    words = ['job title "Head" of \\ IT', "based in 上海\tcity"]
    with session_scope() as session:
        contact_id = session.scalars(select(ContactScore.contact_id).limit(1)).one()
        serving.write(session, [(contact_id, 0.25, words)], version=7, now=END)
        row = session.get_one(ContactScore, contact_id)
        session.refresh(row)
        assert (row.probability, row.factors, row.model_version) == (0.25, words, 7)


def test_slices_of_the_population_hold_every_contact_once_with_the_same_features(
    pg_backend: object,
) -> None:
    clock.freeze(END)
    simulate(300, 60, seed=8, end=END, progress=False)
    with session_scope() as session:
        whole = features.build(session, END)
        parts = [features.build(session, END, ids=ids) for ids in features.id_slices(3)]
    sliced = features.FeatureFrame.concatenate(parts)
    assert sorted(sliced.contact_ids) == sorted(whole.contact_ids) and len(whole) == 300
    row_of = {contact_id: i for i, contact_id in enumerate(whole.contact_ids)}
    for i, contact_id in enumerate(sliced.contact_ids):
        assert np.array_equal(sliced.numeric[i], whole.numeric[row_of[contact_id]], equal_nan=True)
        assert list(sliced.categorical[i]) == list(whole.categorical[row_of[contact_id]])
