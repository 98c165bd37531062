"""The predictive model: a calibrated logistic regression over the features, its holdout
metrics, and the per-contact factors that explain a probability in words.

Logistic regression rather than gradient boosting because each feature's contribution to a
contact's log-odds is then exact (coefficient × distance from the average contact), which is
what "top contributing factors" must be; the generative process is close to additive anyway.
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from core.ids import sign, signature_matches
from scoring.predictive.features import (
    FEATURES,
    NUMERIC,
    FeatureFrame,
    describe_many,
    phrase_group,
)

ALGORITHM = "calibrated logistic regression"
ARTIFACT_FORMAT = 3  # raised whenever ScoringModel's pickled shape changes
TOP_FACTORS = 3
# Reasons are picked from the features lifting a contact most: this many of them.
CANDIDATE_FACTORS = TOP_FACTORS + 2
MIN_CATEGORY_ROWS = 20  # a rarer category (or one never seen) counts as its feature's "other"
PHRASE_GROUPS = np.unique([phrase_group(f) for f in FEATURES], return_inverse=True)[1]


class ArtifactTampered(Exception):
    """A stored model's signature does not match: it was not written by this service."""


class ArtifactOutdated(Exception):
    """A stored model was written by an older version of this class and cannot be used."""


class Encoding:
    """One-hot columns for the categorical features: one per category seen on at least
    MIN_CATEGORY_ROWS training rows, plus one "other" per feature for the rest."""

    def __init__(self, categorical: np.ndarray) -> None:
        self.columns: list[dict[Any, int]] = []
        self.others: list[int] = []
        width = 0
        for feature in range(categorical.shape[1]):
            counts = Counter(categorical[:, feature].tolist())
            frequent = sorted(v for v, n in counts.items() if n >= MIN_CATEGORY_ROWS)
            self.columns.append({value: width + i for i, value in enumerate(frequent)})
            width += len(frequent)
            self.others.append(width)
            width += 1
        self.width = width

    def codes(self, categorical: np.ndarray) -> np.ndarray:
        """Each row's column for each categorical feature (dictionary look-ups, no sorting)."""
        out = np.empty(categorical.shape, dtype=np.int64)
        for feature, (columns, other) in enumerate(zip(self.columns, self.others, strict=True)):
            get = columns.get
            out[:, feature] = [get(v, other) for v in categorical[:, feature].tolist()]
        return out

    def one_hot(self, codes: np.ndarray) -> sparse.csr_matrix:
        rows, features = codes.shape
        return sparse.csr_matrix(
            (np.ones(rows * features), codes.ravel(), np.arange(0, rows * features + 1, features)),
            shape=(rows, self.width),
        )


class ScoringModel:
    """The fitted preparation and calibrated classifier, plus what explaining needs.

    The preparation (scaling, one-hot encoding: unsupervised) is fitted once on all training
    rows, so scoring transforms each row once, not once per calibration fold."""

    def __init__(self, frame: FeatureFrame, labels: np.ndarray) -> None:
        positives = int(labels.sum())
        method = "isotonic" if positives >= 1000 else "sigmoid"
        self.scaler = StandardScaler().fit(frame.numeric)
        self.encoding = Encoding(frame.categorical)
        scaled, codes = self._prepare(frame)
        self.calibrated = CalibratedClassifierCV(
            LogisticRegression(max_iter=2000), method=method, cv=3
        )
        self.calibrated.fit(self._matrix(scaled, codes), labels)
        self.method = method
        self.format = ARTIFACT_FORMAT
        folds = self.calibrated.calibrated_classifiers_
        # Each column's mean coefficient over the folds. A feature's contribution to a row's
        # log-odds is the sum over its columns of coefficient × value, less the training
        # rows' average of the same, so contributions are relative to the average contact.
        coefficients = np.mean([f.estimator.coef_[0] for f in folds], axis=0)
        self.numeric_weights = coefficients[: len(NUMERIC)]
        self.category_weights = coefficients[len(NUMERIC) :]
        self.baseline = self._raw_contributions(scaled, codes).mean(axis=0)

    def _prepare(self, frame: FeatureFrame) -> tuple[np.ndarray, np.ndarray]:
        return self.scaler.transform(frame.numeric), self.encoding.codes(frame.categorical)

    def _matrix(self, scaled: np.ndarray, codes: np.ndarray) -> sparse.csr_matrix:
        return sparse.hstack(
            [sparse.csr_matrix(scaled), self.encoding.one_hot(codes)], format="csr"
        )

    def _raw_contributions(self, scaled: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return np.hstack([scaled * self.numeric_weights, self.category_weights[codes]])

    def prepared(self, frame: FeatureFrame) -> sparse.csr_matrix:
        """The matrix the classifier reads."""
        return self._matrix(*self._prepare(frame))

    def explain(self, frame: FeatureFrame) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (what predict_proba gives) and each feature's contribution
        to each row's log-odds, from one preparation."""
        scaled, codes = self._prepare(frame)
        probabilities = self.calibrated.predict_proba(self._matrix(scaled, codes))[:, 1]
        return probabilities, self._raw_contributions(scaled, codes) - self.baseline

    def predict(self, frame: FeatureFrame) -> np.ndarray:
        if len(frame) == 0:
            return np.zeros(0)
        return self.explain(frame)[0]

    def score(self, frame: FeatureFrame) -> tuple[np.ndarray, list[list[str]]]:
        """Each contact's probability and the top reasons, in words, that lift it."""
        if len(frame) == 0:
            return np.zeros(0), []
        probabilities, contributions = self.explain(frame)
        return probabilities, top_factors(frame, contributions)


def top_factors(frame: FeatureFrame, contributions: np.ndarray) -> list[list[str]]:
    """Up to TOP_FACTORS reasons per row: among the CANDIDATE_FACTORS features lifting it most
    (by more than 0.01 in log-odds), in order, those with something to say, each phrase once.
    Phrases are made feature by feature for all the rows that need them."""
    width = min(CANDIDATE_FACTORS, contributions.shape[1])
    candidates = np.argpartition(-contributions, width - 1, axis=1)[:, :width]
    lifts = np.take_along_axis(contributions, candidates, axis=1)
    order = np.argsort(-lifts, axis=1, kind="stable")
    candidates = np.take_along_axis(candidates, order, axis=1)
    lifting = np.take_along_axis(lifts, order, axis=1) > 0.01
    phrases = np.full(candidates.shape, None, dtype=object)
    speaks = np.zeros(candidates.shape, dtype=bool)
    rows, ranks = np.nonzero(lifting)
    indexes = candidates[rows, ranks]
    by_feature = np.argsort(indexes, kind="stable")
    bounds = np.flatnonzero(np.diff(indexes[by_feature])) + 1
    for cells in np.split(by_feature, bounds) if len(by_feature) else []:
        words = describe_many(FEATURES[indexes[cells[0]]], frame.readable, rows[cells])
        phrases[rows[cells], ranks[cells]] = words
        speaks[rows[cells], ranks[cells]] = [w is not None for w in words]
    # A phrase already given by a higher-ranked feature of the same group is not repeated.
    groups = PHRASE_GROUPS[candidates]
    given = speaks.copy()
    for rank in range(1, width):
        earlier = (groups[:, :rank] == groups[:, rank : rank + 1]) & speaks[:, :rank]
        given[:, rank] &= ~earlier.any(axis=1)
    given &= np.cumsum(given, axis=1) <= TOP_FACTORS
    chosen = phrases[given].tolist()
    ends = np.cumsum(given.sum(axis=1)).tolist()
    return [chosen[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def dump(model: ScoringModel, secret: str) -> tuple[bytes, str]:
    artifact = pickle.dumps(model)
    return artifact, sign(secret, artifact)


def load(artifact: bytes, signature: str, secret: str) -> ScoringModel:
    if not signature_matches(secret, artifact, signature):
        raise ArtifactTampered("the stored model's signature does not match; refusing to load it")
    try:
        model = pickle.loads(artifact)  # noqa: S301 - signature verified above
    except (AttributeError, ImportError) as missing:  # a class this version no longer has
        raise ArtifactOutdated(
            "the stored model was trained by another version; retrain it"
        ) from missing
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
