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
from scipy import sparse
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from core.ids import sign, signature_matches
from scoring.predictive.features import FEATURES, NUMERIC, FeatureFrame, describe_many

ALGORITHM = "calibrated logistic regression"
ARTIFACT_FORMAT = 2  # raised whenever ScoringModel's pickled shape changes
TOP_FACTORS = 3


class ArtifactTampered(Exception):
    """A stored model's signature does not match: it was not written by this service."""


class ArtifactOutdated(Exception):
    """A stored model was written by an older version of this class and cannot be used."""


def preparation() -> ColumnTransformer:
    """Scales the numeric features and one-hot encodes the categorical ones (sparse)."""
    numeric = list(range(len(NUMERIC)))
    categorical = list(range(len(NUMERIC), len(FEATURES)))
    encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20)
    return ColumnTransformer(
        [("num", StandardScaler(), numeric), ("cat", encoder, categorical)],
        sparse_threshold=1.0,
    )


class ScoringModel:
    """The fitted preparation and calibrated classifier, plus what explaining needs.

    The preparation (scaling, one-hot encoding: unsupervised) is fitted once on all training
    rows, so scoring transforms each row once, not once per calibration fold."""

    def __init__(self, values: np.ndarray, labels: np.ndarray) -> None:
        positives = int(labels.sum())
        method = "isotonic" if positives >= 1000 else "sigmoid"
        self.prepare = preparation().fit(values)
        prepared = sparse.csr_matrix(self.prepare.transform(values))
        self.calibrated = CalibratedClassifierCV(
            LogisticRegression(max_iter=2000), method=method, cv=3
        )
        self.calibrated.fit(prepared, labels)
        self.method = method
        self.format = ARTIFACT_FORMAT
        folds = self.calibrated.calibrated_classifiers_
        # Each transformed column's mean coefficient over the folds, summed into the feature it
        # came from: a row's contributions are (row − average row) @ weights.
        coefficients = np.mean([f.estimator.coef_[0] for f in folds], axis=0)
        self.weights = coefficients[:, None] * self._owners()
        self.baseline = np.asarray(prepared.mean(axis=0)).ravel() @ self.weights

    def _owners(self) -> np.ndarray:
        """A 0/1 matrix: transformed column × the feature (in FEATURES) it came from."""
        owners = list(range(len(NUMERIC)))
        encoder: OneHotEncoder = self.prepare.named_transformers_["cat"]
        for name in encoder.get_feature_names_out():
            owners.append(len(NUMERIC) + int(name.split("_", 1)[0].removeprefix("x")))
        matrix = np.zeros((len(owners), len(FEATURES)))
        matrix[np.arange(len(owners)), owners] = 1.0
        return matrix

    def explain(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (what predict_proba gives) and each feature's contribution
        to each row's log-odds, from one transform."""
        prepared = sparse.csr_matrix(self.prepare.transform(values))
        probabilities = self.calibrated.predict_proba(prepared)[:, 1]
        contributions = np.asarray(prepared @ self.weights) - self.baseline
        return probabilities, contributions

    def predict(self, values: np.ndarray) -> np.ndarray:
        if len(values) == 0:
            return np.zeros(0)
        return self.explain(values)[0]

    def score(self, frame: FeatureFrame) -> tuple[np.ndarray, list[list[str]]]:
        """Each contact's probability and the top reasons, in words, that lift it."""
        if not frame.contact_ids:
            return np.zeros(0), []
        probabilities, contributions = self.explain(frame.values)
        return probabilities, top_factors(frame, contributions)


def top_factors(frame: FeatureFrame, contributions: np.ndarray) -> list[list[str]]:
    """Up to TOP_FACTORS distinct phrases per row for the features lifting it most; phrases are
    made feature by feature for all the rows that need them."""
    candidates = np.argsort(-contributions, axis=1)[:, : TOP_FACTORS + 2]
    lifting = np.take_along_axis(contributions, candidates, axis=1) > 0.01
    phrases = np.full(candidates.shape, None, dtype=object)
    for index in np.unique(candidates[lifting]):
        rows, ranks = np.nonzero(lifting & (candidates == index))
        phrases[rows, ranks] = describe_many(FEATURES[index], frame.readable, rows)
    factors = []
    for row in phrases.tolist():
        words: list[str] = []
        for phrase in row:
            if phrase and phrase not in words:
                words.append(phrase)
                if len(words) == TOP_FACTORS:
                    break
        factors.append(words)
    return factors


def dump(model: ScoringModel, secret: str) -> tuple[bytes, str]:
    artifact = pickle.dumps(model)
    return artifact, sign(secret, artifact)


def load(artifact: bytes, signature: str, secret: str) -> ScoringModel:
    if not signature_matches(secret, artifact, signature):
        raise ArtifactTampered("the stored model's signature does not match; refusing to load it")
    model = pickle.loads(artifact)  # noqa: S301 - signature verified above
    assert isinstance(model, ScoringModel)
    if getattr(model, "format", 1) != ARTIFACT_FORMAT:
        raise ArtifactOutdated("the stored model was trained by an older version; retrain it")
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
