"""The predictive model: a calibrated logistic regression over the features, its holdout
metrics, and the per-contact factors that explain a probability in words.

Logistic regression rather than gradient boosting because each feature's contribution to a
contact's log-odds is then exact (coefficient × distance from the average contact), which is
what "top contributing factors" must be; the generative process is close to additive anyway.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from core.ids import sign, signature_matches
from scoring.predictive.features import FEATURES, NUMERIC, FeatureFrame, describe

ALGORITHM = "calibrated logistic regression"
TOP_FACTORS = 3


class ArtifactTampered(Exception):
    """A stored model's signature does not match: it was not written by this service."""


def pipeline() -> Pipeline:
    numeric = list(range(len(NUMERIC)))
    categorical = list(range(len(NUMERIC), len(FEATURES)))
    prepare = ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            (
                "cat",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=False
                ),
                categorical,
            ),
        ]
    )
    return Pipeline([("prepare", prepare), ("model", LogisticRegression(max_iter=2000))])


class ScoringModel:
    """The fitted calibrated classifier plus what it needs to explain a prediction."""

    def __init__(self, values: np.ndarray, labels: np.ndarray) -> None:
        positives = int(labels.sum())
        method = "isotonic" if positives >= 1000 else "sigmoid"
        self.calibrated = CalibratedClassifierCV(pipeline(), method=method, cv=3)
        self.calibrated.fit(values, labels)
        self.method = method
        folds = [c.estimator for c in self.calibrated.calibrated_classifiers_]
        # Each fold's average transformed row: a contribution is measured from it.
        self.baselines = [f.named_steps["prepare"].transform(values).mean(axis=0) for f in folds]
        self.owner = [self._owners(f) for f in folds]

    @staticmethod
    def _owners(fold: Pipeline) -> np.ndarray:
        """A 0/1 matrix: transformed column × the feature (in FEATURES) it came from."""
        prepare: ColumnTransformer = fold.named_steps["prepare"]
        owners = list(range(len(NUMERIC)))
        encoder: OneHotEncoder = prepare.named_transformers_["cat"]
        for name in encoder.get_feature_names_out():
            owners.append(len(NUMERIC) + int(name.split("_", 1)[0].removeprefix("x")))
        matrix = np.zeros((len(owners), len(FEATURES)))
        matrix[np.arange(len(owners)), owners] = 1.0
        return matrix

    def explain(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities, and each feature's contribution to each row's log-odds,
        from one transform per fold (what predict_proba does, plus the contributions)."""
        probabilities = np.zeros(len(values))
        contributions = np.zeros((len(values), len(FEATURES)))
        folds = self.calibrated.calibrated_classifiers_
        for fold, baseline, owners in zip(folds, self.baselines, self.owner, strict=True):
            prepare = fold.estimator.named_steps["prepare"]
            regression = fold.estimator.named_steps["model"]
            transformed = prepare.transform(values)
            decision = regression.decision_function(transformed)
            probabilities += np.clip(fold.calibrators[0].predict(decision), 0.0, 1.0)
            contributions += ((transformed - baseline) * regression.coef_[0]) @ owners
        return probabilities / len(folds), contributions / len(folds)

    def predict(self, values: np.ndarray) -> np.ndarray:
        if len(values) == 0:
            return np.zeros(0)
        return self.explain(values)[0]

    def score(self, frame: FeatureFrame) -> tuple[np.ndarray, list[list[str]]]:
        """Each contact's probability and the top reasons, in words, that lift it."""
        if not frame.contact_ids:
            return np.zeros(0), []
        probabilities, contributions = self.explain(frame.values)
        candidates = np.argsort(-contributions, axis=1)[:, : TOP_FACTORS + 2]
        factors = []
        for number, order in enumerate(candidates):
            words: list[str] = []
            for index in order:
                if contributions[number, index] <= 0.01 or len(words) == TOP_FACTORS:
                    break
                phrase = describe(FEATURES[index], frame.readable, number)
                if phrase and phrase not in words:
                    words.append(phrase)
            factors.append(words)
        return probabilities, factors


def dump(model: ScoringModel, secret: str) -> tuple[bytes, str]:
    artifact = pickle.dumps(model)
    return artifact, sign(secret, artifact)


def load(artifact: bytes, signature: str, secret: str) -> ScoringModel:
    if not signature_matches(secret, artifact, signature):
        raise ArtifactTampered("the stored model's signature does not match; refusing to load it")
    model = pickle.loads(artifact)  # noqa: S301 - signature verified above
    assert isinstance(model, ScoringModel)
    return model


def top_decile_lift(labels: np.ndarray, scores: np.ndarray) -> float:
    """How many times the base rate the positive rate is among the top 10% of scores."""
    if len(labels) == 0 or labels.mean() == 0:
        return 0.0
    top = np.argsort(-scores, kind="stable")[: max(1, len(scores) // 10)]
    return float(labels[top].mean() / labels.mean())


def calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-count bins: Σ share × |mean p − positive rate|."""
    order = np.argsort(probabilities, kind="stable")
    error = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            gap = abs(probabilities[chunk].mean() - labels[chunk].mean())
            error += len(chunk) / len(labels) * gap
    return float(error)


def metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    return {
        "roc_auc": round(float(roc_auc_score(labels, probabilities)), 4),
        "top_decile_lift": round(top_decile_lift(labels, probabilities), 3),
        "calibration_error": round(calibration_error(labels, probabilities), 4),
        "brier": round(float(np.mean((probabilities - labels) ** 2)), 5),
        "positive_rate": round(float(labels.mean()), 5),
        "mean_probability": round(float(probabilities.mean()), 5),
    }
