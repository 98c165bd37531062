"""Credit runs: every conversion's touchpoints credited under one model and its parameters,
computed in the background (see `attribution.tasks`) and stored, so that reports only add up
rows and never compute credits.

Every model but Markov credits a conversion from its own path alone (the simplified Shapley
value reduces to that too), so a run is extended with each conversion as it is recorded.
Markov learns from all paths together: a refit (periodic, or when a conversion brings a kind
or key the fit has never seen) stores each key's removal effect and rewrites the run's credits;
conversions recorded in between are credited from the stored fit.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import numpy as np
from sqlalchemy import delete, exists, func, select, text
from sqlalchemy.orm import Session

from attribution.db_models import Conversion, ConversionKind, Credit, CreditRun, RunConversion
from attribution.models import (
    ConversionPath,
    Model,
    PathSet,
    Touch,
    markov_removal_effects,
    split_value,
    touch_weights,
)
from attribution.touchpoints import DEFAULT_LOOKBACK, Touchpoint, load_touchpoints, within
from core.db import bulk_insert, dialect_insert, is_postgres, session_scope
from core.models import table_of, utcnow

DATA_DRIVEN = (Model.markov, Model.shapley)


class Level(StrEnum):
    """What the data-driven models treat as one key: a channel, or a campaign."""

    channel = "channel"
    campaign = "campaign"


@dataclass(frozen=True)
class RunParameters:
    model: Model
    level: Level = Level.channel
    lookback_days: int = DEFAULT_LOOKBACK.days
    half_life_days: float = 7.0
    order: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.lookback_days <= 3650:
            raise ValueError("lookback_days must be between 1 and 3650")
        if not 0 < self.half_life_days <= 3650:
            raise ValueError("half_life_days must be above 0 and at most 3650")
        if not 1 <= self.order <= 4:
            raise ValueError("order must be between 1 and 4")

    @property
    def key(self) -> str:
        """Names the run by the parameters that change its credits, and only those."""
        parts = [self.model.value, f"lookback={self.lookback_days}"]
        if self.model is Model.time_decay:
            parts.append(f"half_life={self.half_life_days:g}")
        if self.model in DATA_DRIVEN:
            parts.append(f"level={self.level.value}")
        if self.model is Model.markov:
            parts.append(f"order={self.order}")
        return ";".join(parts)

    @classmethod
    def from_key(cls, key: str) -> RunParameters:
        """The parameters a stored run was named by (the inverse of `key`)."""
        model, *pairs = key.split(";")
        values = dict(pair.split("=", 1) for pair in pairs)
        return cls(
            Model(model),
            level=Level(values.get("level", Level.channel.value)),
            lookback_days=int(values["lookback"]),
            half_life_days=float(values.get("half_life", 7.0)),
            order=int(values.get("order", 1)),
        )

    def touch_key(self, touch: Touch) -> str:
        if self.level is Level.campaign and touch.campaign:
            return "campaign:" + touch.campaign
        return "channel:" + touch.channel


# The runs kept up to date from the start: every model with its default parameters, the
# data-driven ones per channel and per campaign (the report's two groupings).
STANDARD_RUNS = tuple(
    RunParameters(model, level)
    for model in Model
    for level in (Level if model in DATA_DRIVEN else (Level.channel,))
)


@dataclass(frozen=True)
class _Pending:
    id: int
    contact_id: uuid.UUID
    kind: str
    value_fen: int
    occurred_at: datetime
    ref: str


def stored_run(session: Session, parameters: RunParameters) -> tuple[CreditRun, bool]:
    """The run for these parameters as stored, without computing anything; created empty
    (and True returned) when no run had these parameters yet."""
    query = select(CreditRun).where(CreditRun.parameters == parameters.key)
    run = session.scalars(query).one_or_none()
    if run is not None:
        return run, False
    session.execute(
        dialect_insert(session, table_of(CreditRun))
        .values(parameters=parameters.key, model=parameters.model.value, computed_at=utcnow())
        .on_conflict_do_nothing(index_elements=["parameters"])
    )
    return session.scalars(query).one(), True


def update_run(
    session: Session, parameters: RunParameters, conversion_ids: Collection[int] | None = None
) -> CreditRun:
    """Credits the recorded conversions the run has not credited yet (only those named, when
    ids are given). Markov credits them from the run's current fit, or refits the whole run
    when the fit has never seen their kind or one of their keys."""
    run = _locked_run(session, parameters)
    if conversion_ids is None:
        # Every credited conversion still exists (deleting one deletes its rows), so equal
        # counts mean nothing is waiting; far cheaper than looking for the missing ones.
        credited = select(func.count()).where(RunConversion.run_id == run.id)
        recorded = select(func.count()).select_from(Conversion)
        if session.scalar(credited) == session.scalar(recorded):
            return run
    pending = _uncredited(session, run, conversion_ids)
    if not pending:
        return run
    paths = _paths(session, pending, timedelta(days=parameters.lookback_days))
    if parameters.model is Model.markov:
        if not _fit_covers(run.fit, pending, paths, parameters):
            return refit(session, parameters)
        weights = _fitted_weights(run.fit, pending, paths, parameters)
    else:
        weights = touch_weights(
            paths,
            parameters.model,
            key=parameters.touch_key,
            half_life=timedelta(days=parameters.half_life_days),
        )
    _store(session, run, pending, paths, weights)
    run.computed_at = utcnow()
    session.flush()
    return run


def refit(session: Session, parameters: RunParameters) -> CreditRun:
    """Fits a Markov run again on every path (converting or not) and rewrites all its credits
    in one transaction, so reports keep reading the previous fit until it commits."""
    if parameters.model is not Model.markov:
        raise ValueError(f"{parameters.model} credits each conversion on its own; no fit")
    run = _locked_run(session, parameters)
    session.execute(delete(Credit).where(Credit.run_id == run.id))
    session.execute(delete(RunConversion).where(RunConversion.run_id == run.id))
    pending = _uncredited(session, run, None)
    lookback = timedelta(days=parameters.lookback_days)
    fit: dict[str, dict[str, float]] = {}
    paths: list[ConversionPath] = []
    if pending:
        touchpoints = load_touchpoints(
            session,
            min(conversion.occurred_at for conversion in pending) - lookback,
            max(conversion.occurred_at for conversion in pending),
        )
        paths = _paths(session, pending, lookback, touchpoints)
        by_kind: dict[str, list[int]] = defaultdict(list)
        for index, conversion in enumerate(pending):
            by_kind[conversion.kind].append(index)
        for kind, indexes in by_kind.items():
            converters = {pending[i].contact_id for i in indexes}
            non_converting = [
                within(touches, touches[-1].at, lookback)
                for contact_id, touches in touchpoints.items()
                if contact_id not in converters and touches
            ]
            sequences = [[parameters.touch_key(t) for t in paths[i].touches] for i in indexes]
            sequences += [[parameters.touch_key(t) for t in touches] for touches in non_converting]
            converted = [True] * len(indexes) + [False] * len(non_converting)
            path_set = PathSet.from_sequences(sequences, converted)
            effects = markov_removal_effects(path_set, parameters.order)
            fit[kind] = dict(zip(path_set.names, effects.tolist(), strict=True))
        _store(session, run, pending, paths, _fitted_weights(fit, pending, paths, parameters))
    now = utcnow()
    run.fit = fit
    run.fit_version += 1
    run.fitted_at = now
    run.fitted_conversions = len(pending)
    run.computed_at = now
    session.flush()
    return run


def credit_conversions(session: Session, conversion_ids: Collection[int]) -> None:
    """Credits newly recorded conversions in every stored run (standard runs made first)."""
    for parameters in _all_runs(session):
        update_run(session, parameters, conversion_ids)


def catch_up() -> None:
    """Brings every run up to date (new runs filled, conversions whose task was lost credited),
    one transaction per run so that each is readable as soon as it is done."""
    for parameters in _each_run():
        with session_scope() as session:
            update_run(session, parameters)
    _analyse()


def refit_all() -> None:
    """Refits every Markov run on all paths as they are now, one transaction per run."""
    for parameters in _each_run():
        if parameters.model is Model.markov:
            with session_scope() as session:
                refit(session, parameters)
    _analyse()


def _analyse() -> None:
    """Fresh planner statistics after bulk writes, so reports keep their index plans and
    in-memory aggregation (PostgreSQL only analyses on its own after a while)."""
    with session_scope() as session:
        if is_postgres(session):
            for table in (RunConversion, Credit):
                session.execute(text(f"ANALYZE {table_of(table).name}"))


def _each_run() -> list[RunParameters]:
    with session_scope() as session:
        return _all_runs(session)


def _all_runs(session: Session) -> list[RunParameters]:
    """Every run's parameters, the standard ones created if missing, in id order so that
    workers lock runs in the same order."""
    for parameters in STANDARD_RUNS:
        stored_run(session, parameters)
    keys = session.scalars(select(CreditRun.parameters).order_by(CreditRun.id))
    return [RunParameters.from_key(key) for key in keys]


def _uncredited(
    session: Session, run: CreditRun, conversion_ids: Collection[int] | None
) -> list[_Pending]:
    query = select(
        Conversion.id,
        Conversion.contact_id,
        Conversion.kind,
        Conversion.value_fen,
        Conversion.occurred_at,
        Conversion.external_ref,
    ).where(
        ~exists().where(
            RunConversion.run_id == run.id, RunConversion.conversion_id == Conversion.id
        )
    )
    if conversion_ids is not None:
        query = query.where(Conversion.id.in_(list(conversion_ids)))
    return [_Pending(*row) for row in session.execute(query.order_by(Conversion.id))]


def _locked_run(session: Session, parameters: RunParameters) -> CreditRun:
    """The run row, created if new and locked so that two workers never credit it twice
    (SQLite's writers are serialised already)."""
    session.execute(
        dialect_insert(session, table_of(CreditRun))
        .values(parameters=parameters.key, model=parameters.model.value, computed_at=utcnow())
        .on_conflict_do_nothing(index_elements=["parameters"])
    )
    query = select(CreditRun).where(CreditRun.parameters == parameters.key)
    if is_postgres(session):
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one()


def _paths(
    session: Session,
    pending: list[_Pending],
    lookback: timedelta,
    touchpoints: dict[uuid.UUID, list[Touchpoint]] | None = None,
) -> list[ConversionPath]:
    """Each conversion's path: its contact's touches in the lookback window before it."""
    contact_ids = None if touchpoints is not None else {c.contact_id for c in pending}
    if touchpoints is None:
        touchpoints = load_touchpoints(
            session,
            min(conversion.occurred_at for conversion in pending) - lookback,
            max(conversion.occurred_at for conversion in pending),
            contact_ids,
        )
    lead_times, opportunity_times = _milestones(session, contact_ids)
    return [
        _path(
            conversion,
            touchpoints.get(conversion.contact_id, []),
            lookback,
            lead_times,
            opportunity_times,
        )
        for conversion in pending
    ]


def _fit_covers(
    fit: dict[str, Any],
    pending: list[_Pending],
    paths: list[ConversionPath],
    parameters: RunParameters,
) -> bool:
    """Whether the fit has an effect for every conversion's kind and every key on its path."""
    for conversion, path in zip(pending, paths, strict=True):
        effects = fit.get(conversion.kind)
        if effects is None:
            return False
        if any(parameters.touch_key(touch) not in effects for touch in path.touches):
            return False
    return True


def _fitted_weights(
    fit: dict[str, Any],
    pending: list[_Pending],
    paths: list[ConversionPath],
    parameters: RunParameters,
) -> np.ndarray:
    """Per touch: its key's fitted removal effect, shared by the path's touches with that key."""
    weights: list[float] = []
    for conversion, path in zip(pending, paths, strict=True):
        effects = fit.get(conversion.kind, {})
        keys = [parameters.touch_key(touch) for touch in path.touches]
        occurrences = Counter(keys)
        weights.extend(float(effects.get(key, 0.0)) / occurrences[key] for key in keys)
    return np.asarray(weights, dtype=np.float64)


def _milestones(
    session: Session, contact_ids: set[uuid.UUID] | None
) -> tuple[dict[uuid.UUID, datetime], dict[tuple[uuid.UUID, str], datetime]]:
    """When each contact became a lead, and when each of their deals became an opportunity."""
    leads = select(Conversion.contact_id, func.min(Conversion.occurred_at)).where(
        Conversion.kind == ConversionKind.lead.value
    )
    opportunities = select(
        Conversion.contact_id, Conversion.external_ref, Conversion.occurred_at
    ).where(Conversion.kind == ConversionKind.opportunity.value)
    if contact_ids is not None:
        leads = leads.where(Conversion.contact_id.in_(contact_ids))
        opportunities = opportunities.where(Conversion.contact_id.in_(contact_ids))
    lead_times = {
        contact_id: at for contact_id, at in session.execute(leads.group_by(Conversion.contact_id))
    }
    opportunity_times = {
        (contact_id, ref): at for contact_id, ref, at in session.execute(opportunities)
    }
    return lead_times, opportunity_times


def _path(
    conversion: _Pending,
    touchpoints: list[Touchpoint],
    lookback: timedelta,
    lead_times: dict[uuid.UUID, datetime],
    opportunity_times: dict[tuple[uuid.UUID, str], datetime],
) -> ConversionPath:
    touches = within(touchpoints, conversion.occurred_at, lookback)
    lead_at = lead_times.get(conversion.contact_id)
    opportunity_at = None
    if conversion.kind == ConversionKind.won.value:
        opportunity_at = opportunity_times.get((conversion.contact_id, conversion.ref))
    return ConversionPath(
        touches,
        conversion.occurred_at,
        conversion.value_fen,
        lead_index=_last_touch_by(touches, lead_at),
        opportunity_index=_last_touch_by(touches, opportunity_at),
    )


def _last_touch_by(touches: Sequence[Touch], moment: datetime | None) -> int | None:
    """The index of the touch that led to a milestone: the last one at or before it."""
    if moment is None:
        return None
    index = sum(1 for touch in touches if touch.at <= moment) - 1
    return index if index >= 0 else None


def _store(
    session: Session,
    run: CreditRun,
    conversions: list[_Pending],
    paths: list[ConversionPath],
    weights: np.ndarray,
) -> None:
    lengths = np.asarray([len(path.touches) for path in paths], dtype=np.int64)
    values = np.asarray([path.value for path in paths], dtype=np.int64)
    path_of_touch = np.repeat(np.arange(len(paths)), lengths)
    totals = np.bincount(path_of_touch, weights=weights, minlength=len(paths))
    # A path whose keys all weigh nothing (a Markov effect of 0) credits nobody: unattributed.
    credits = split_value(np.where(totals > 0, values, 0), lengths, weights)
    shares = weights / np.where(totals > 0, totals, 1.0)[path_of_touch]

    summaries: list[dict[str, Any]] = []
    credit_rows: list[dict[str, Any]] = []
    flat = 0
    for conversion, path in zip(conversions, paths, strict=True):
        attributed = 0
        channels_seen: set[str] = set()
        campaigns_seen: set[str | None] = set()
        for position, touch in enumerate(cast(tuple[Touchpoint, ...], path.touches)):
            credit_rows.append(
                {
                    "run_id": run.id,
                    "conversion_id": conversion.id,
                    "kind": conversion.kind,
                    "converted_at": conversion.occurred_at,
                    "position": position,
                    "touched_at": touch.at,
                    "channel": touch.channel,
                    "campaign": touch.campaign,
                    "touch_source": touch.source,
                    "touch_ref": touch.ref,
                    "credit_fen": int(credits[flat]),
                    "share": float(shares[flat]),
                    "value_fen": conversion.value_fen,
                    "first_for_channel": touch.channel not in channels_seen,
                    "first_for_campaign": touch.campaign not in campaigns_seen,
                }
            )
            channels_seen.add(touch.channel)
            campaigns_seen.add(touch.campaign)
            attributed += int(credits[flat])
            flat += 1
        summaries.append(
            {
                "run_id": run.id,
                "conversion_id": conversion.id,
                "kind": conversion.kind,
                "converted_at": conversion.occurred_at,
                "value_fen": conversion.value_fen,
                "touches": len(path.touches),
                "unattributed_fen": conversion.value_fen - attributed,
            }
        )
    for table, rows in ((table_of(RunConversion), summaries), (table_of(Credit), credit_rows)):
        bulk_insert(session, table, rows)
