"""Serving the active model: each contact's probability and top factors, written beside its
rule scores in `contact_scores` so segments, journeys and routing can use them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import orjson
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from capture.models import Contact
from core.clock import clock
from core.db import is_postgres, session_scope
from core.models import table_of
from core.settings import get_settings
from scoring.engine import active_rules, rescore
from scoring.models import ContactScore, PredictiveModel
from scoring.predictive import features
from scoring.predictive.model import ScoringModel
from scoring.predictive.training import loadable
from scoring.rules import FIT
from scoring.scorer import knobs

# Slices a whole-population refresh is cut into (see `predict_population`).
POPULATION_SLICES = 2
_loaded: dict[int, ScoringModel] = {}


def active_model(session: Session) -> tuple[PredictiveModel, ScoringModel] | None:
    row = session.scalar(select(PredictiveModel).where(PredictiveModel.status == "active"))
    if row is None:
        return None
    if row.version not in _loaded:
        model = loadable(row, get_settings().secret_key)
        if model is None:  # an outdated artifact: the rule score serves until a retrain
            return None
        _loaded.clear()
        _loaded[row.version] = model
    return row, _loaded[row.version]


def predict(
    session: Session,
    contact_ids: Collection[uuid.UUID] | None = None,
    now: datetime | None = None,
) -> int:
    """Scores contacts (all when `contact_ids` is None) with the active model; returns how many.
    Without an active model (cold start) nothing is written and the rule score stays in use."""
    loaded = active_model(session)
    if loaded is None:
        return 0
    row, model = loaded
    now = now or clock.now()
    if contact_ids is None and is_postgres(session):
        return predict_population(session, row.version, model, now)
    frame = features.build(session, now, contact_ids)
    ensure_score_rows(session, frame.contact_ids, now)
    return score_and_write(session, frame, row.version, model, now)


def predict_population(session: Session, version: int, model: ScoringModel, now: datetime) -> int:
    """Everyone, in slices of contact ids: while one slice is scored and written here, the next
    slice's features are computed by PostgreSQL for a second thread, so the database and this
    process work at the same time instead of in turn."""
    ensure_score_rows(session, None, now)
    slices = features.id_slices(POPULATION_SLICES)
    scored = 0
    with ThreadPoolExecutor(max_workers=1) as builder:
        upcoming = builder.submit(build_slice, now, slices[0])
        for following in [*slices[1:], None]:
            frame = upcoming.result()
            if following is not None:
                upcoming = builder.submit(build_slice, now, following)
            scored += score_and_write(session, frame, version, model, now)
    return scored


def build_slice(now: datetime, ids: features.IdRange) -> features.FeatureFrame:
    with session_scope() as reading:
        return features.build(reading, now, ids=ids)


def score_and_write(
    session: Session, frame: features.FeatureFrame, version: int, model: ScoringModel, now: datetime
) -> int:
    if not frame.contact_ids:
        return 0
    probabilities, factors = model.score(frame)
    results = list(zip(frame.contact_ids, probabilities.tolist(), factors, strict=True))
    write(session, results, version, now)
    return len(results)


def ensure_score_rows(session: Session, contact_ids: list[uuid.UUID] | None, now: datetime) -> None:
    """Contacts never scored by the rules (of `contact_ids`, or any) get their rule scores
    first (one anti-join)."""
    unscored = set(
        session.scalars(
            select(Contact.id)
            .outerjoin(ContactScore, ContactScore.contact_id == Contact.id)
            .where(ContactScore.contact_id.is_(None), Contact.merged_into_id.is_(None))
        )
    )
    missing = list(unscored) if contact_ids is None else [c for c in contact_ids if c in unscored]
    if missing:
        rescore(session, knobs(session, now), active_rules(session, FIT), now, missing)


def write(
    session: Session, results: list[tuple[uuid.UUID, float, list[str]]], version: int, now: datetime
) -> None:
    if is_postgres(session):
        # COPY into a temporary table and one UPDATE … FROM: 100,000 rows in about a second.
        session.execute(
            text(
                "CREATE TEMP TABLE scoring_predictions"
                " (contact_id uuid PRIMARY KEY, probability float8, factors jsonb)"
                " ON COMMIT DROP"
            )
        )
        copy_text(
            session,
            "COPY scoring_predictions (contact_id, probability, factors) FROM STDIN",
            (f"{cid}\t{p!r}\t{copy_escaped(orjson.dumps(words))}\n" for cid, p, words in results),
        )
        session.execute(
            text(
                "UPDATE contact_scores SET probability = p.probability, factors = p.factors,"
                " model_version = :version, predicted_at = :now"
                " FROM scoring_predictions p WHERE contact_scores.contact_id = p.contact_id"
            ),
            {"version": version, "now": now},
        )
        session.execute(text("DROP TABLE scoring_predictions"))
        return
    table = table_of(ContactScore)
    session.execute(
        update(table)
        .where(table.c.contact_id == bindparam("b_id"))
        .values(
            probability=bindparam("probability"),
            factors=bindparam("factors"),
            model_version=version,
            predicted_at=now,
        ),
        [{"b_id": cid, "probability": p, "factors": words} for cid, p, words in results],
    )


def copy_escaped(json: bytes) -> str:
    """JSON as a COPY text field: JSON never holds a raw tab or newline, but its backslashes
    (escapes such as \\") must be doubled."""
    return json.decode().replace("\\", "\\\\")


def copy_text(session: Session, statement: str, lines: Iterable[str]) -> None:
    """COPY … FROM STDIN in text format, written in large blocks rather than row by row. Each
    line must already be escaped (a backslash doubled; tabs and newlines only as separators)."""
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(statement) as copy:
        block: list[str] = []
        for line in lines:
            block.append(line)
            if len(block) == 10_000:
                copy.write("".join(block))
                block.clear()
        copy.write("".join(block))
