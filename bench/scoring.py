"""Scoring benchmarks on PostgreSQL: rescoring 1,000,000 contacts after a rule change, and, on
a simulated population of 100,000 contacts, the predictive model's ROC AUC against the ground
truth beside the rule score's and the true probabilities' (the ceiling), and the time to score
all 100,000 with the model.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

import numpy as np
from sklearn.metrics import roc_auc_score
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from bench.environment import bench_environment
from bench.options import Options
from bench.results import at_least, at_most, record
from core.clock import clock
from core.db import session_scope
from scoring import scorer
from scoring.models import ScoringRule, SimulatedContact
from scoring.predictive import features, serving, training
from scoring.simulation import simulate
from scoring.simulation.run import default_end

RESCORE_CONTACTS = 1_000_000
SIMULATED_CONTACTS = 100_000


def load_contacts(count: int) -> None:
    """`count` known contacts with three page views each in the last 60 days, a pricing view
    for one in three and a form submission for one in five, written by set-based SQL."""
    now = clock.now()
    with session_scope() as session:
        session.execute(
            text(
                "INSERT INTO contacts (id, is_known, traits, tags, event_counts, page_views,"
                " email_consent, sms_consent, email_unsubscribed, sms_unsubscribed, suppressed,"
                " first_seen_at, last_seen_at, created_at, updated_at)"
                " SELECT gen_random_uuid(), true, jsonb_build_object('title',"
                " (ARRAY['CTO','工程师','IT经理','学生'])[1 + n % 4]), '[]', '{}', 3,"
                " 'unknown', 'unknown', false, false, false,"
                " :now - interval '60 days', :now, :now, :now"
                " FROM generate_series(1, :count) AS n"
            ),
            {"count": count, "now": now},
        )
        session.execute(
            text(
                "INSERT INTO events (source_id, message_id, contact_id, type, name, properties,"
                " context, timestamp, received_at, path)"
                " SELECT gen_random_uuid(), gen_random_uuid()::text, c.id,"
                " CASE WHEN k = 4 THEN 'track' ELSE 'page' END,"
                " CASE WHEN k = 4 THEN 'form_submitted' END, '{}', '{}', t, t,"
                " CASE WHEN k = 4 THEN NULL WHEN k = 3 THEN '/pricing' ELSE '/product' END"
                " FROM contacts c CROSS JOIN generate_series(1, 4) AS k,"
                " LATERAL (SELECT :now - random() * interval '60 days' AS t) AS at"
                " WHERE k <= 2 OR (k = 3 AND abs(hashtext(c.id::text)) % 100 < 34)"
                " OR (k = 4 AND abs(hashtext(c.id::text || 'form')) % 100 < 20)"
            ),
            {"now": now},
        )
        session.execute(text("ANALYZE contacts; ANALYZE events"))


def change_rule(name: str, **values: object) -> tuple[uuid.UUID, int]:
    """Changes a rule as the API would (a new version on record); returns its id and version."""
    with session_scope() as session:
        rule = session.scalar(select(ScoringRule).where(ScoringRule.name == name))
        assert rule is not None
        session.execute(
            update(ScoringRule)
            .where(ScoringRule.id == rule.id)
            .values(version=rule.version + 1, **values)
        )
        session.refresh(rule)
        scorer.record_version(session, rule, "updated", None)
        return rule.id, rule.version


def timed_rescore(rule_id: uuid.UUID, version: int) -> float:
    with session_scope() as session:
        started = time.perf_counter()
        assert scorer.rescore_rule(session, rule_id, version)
    return time.perf_counter() - started


def rescoring(options: Options) -> None:
    with bench_environment():
        clock.freeze(default_end())
        try:
            started = time.perf_counter()
            load_contacts(RESCORE_CONTACTS)
            print(
                f"  loaded {RESCORE_CONTACTS:,} contacts in {time.perf_counter() - started:.0f} s"
            )
            with session_scope() as session:
                started = time.perf_counter()
                scorer.rescore_all(session)
            record(
                "scoring.rederive_1m_contacts_from_events_seconds",
                time.perf_counter() - started,
                "s",
            )
            with session_scope() as session:
                session.execute(text("ANALYZE score_ledger; ANALYZE contact_scores"))
            record(
                "scoring.rescore_1m_contacts_after_points_change_seconds",
                timed_rescore(*change_rule("Page view", points=2)),
                "s",
                target=at_most(30),
            )
            record(
                "scoring.rescore_1m_contacts_after_condition_change_seconds",
                timed_rescore(*change_rule("Pricing page viewed", daily_limit=1)),
                "s",
                target=at_most(30),
            )
        finally:
            clock.unfreeze()


def prediction(options: Options) -> None:
    with bench_environment():
        end = default_end()
        clock.freeze(end)
        try:
            started = time.perf_counter()
            summary = simulate(SIMULATED_CONTACTS, 180, seed=2026, end=end)
            record(
                "scoring.simulate_100k_contacts_seconds",
                time.perf_counter() - started,
                "s",
                target=at_most(300),
            )
            print(f"  {summary}")
            with session_scope() as session:
                started = time.perf_counter()
                model = training.retrain(session)
                record(
                    "scoring.train_model_100k_contacts_seconds", time.perf_counter() - started, "s"
                )
                print(f"  model v{model.version}: {model.status}, {model.metrics}")
                assert model.holdout_cutoff is not None
                holdout = ground_truth_aucs(session, model.holdout_cutoff, model.label_days)
            with session_scope() as session:
                started = time.perf_counter()
                scored = serving.predict(session)
            seconds = time.perf_counter() - started
            print(f"  scored {scored:,} contacts")
            record("scoring.predict_100k_contacts_seconds", seconds, "s", target=at_most(5))
            for outcome, aucs in holdout.items():
                print(f"  AUC against the {outcome} outcome: {aucs}")
                ceiling = record(
                    f"scoring.true_probability_auc_{outcome}_100k", aucs["truth"], "AUC"
                )
                rule = record(f"scoring.rule_score_auc_{outcome}_100k", aucs["rule"], "AUC")
                record(
                    f"scoring.model_auc_vs_rule_score_{outcome}_100k",
                    aucs["model"],
                    "AUC",
                    baseline=rule,
                    target=at_least(1.0, "ratio"),
                )
                record(
                    f"scoring.model_auc_vs_ceiling_{outcome}_100k",
                    aucs["model"],
                    "AUC",
                    baseline=ceiling,
                )
            record("scoring.model_calibration_error_100k", model.metrics["calibration_error"], "")
            record("scoring.model_top_decile_lift_100k", model.metrics["top_decile_lift"], "x")
        finally:
            clock.unfreeze()


def ground_truth_aucs(
    session: Session, cutoff: datetime, label_days: int
) -> dict[str, dict[str, float]]:
    """AUCs on the holdout contacts (open at the cutoff) of the model, the rule score and the
    true probability, against two ground-truth outcomes: an opportunity within the label
    window (what the model predicts), and an opportunity at all (what the true probability is
    the probability of, so its AUC there is the ceiling)."""
    reached = training.outcomes(session)
    known = features.first_identified(session)
    snapshot = training.snapshot(session, cutoff, label_days, reached, known)
    truth = {row.contact_id: row for row in session.scalars(select(SimulatedContact))}
    end = cutoff + timedelta(days=label_days)
    ids = snapshot.frame.contact_ids
    loaded = serving.active_model(session)
    assert loaded is not None
    scores = {
        "model": loaded[1].predict(snapshot.frame.values),
        "rule": training.rule_scores_at(session, cutoff, ids),
        "truth": np.array([truth[c].true_probability for c in ids]),
    }
    converted_at = [truth[c].converted_at for c in ids]
    outcomes = {
        "window": np.array([int(at is not None and cutoff < at <= end) for at in converted_at]),
        "eventual": np.array([int(at is not None and at > cutoff) for at in converted_at]),
    }
    return {
        outcome: {name: float(roc_auc_score(labels, s)) for name, s in scores.items()}
        for outcome, labels in outcomes.items()
    }


def run(options: Options) -> None:
    prediction(options)
    rescoring(options)
