"""Credit runs: every conversion's touchpoints credited under one model and its parameters,
computed once and stored so that reports only add up rows.

A rule-based run is extended with the conversions it has not seen yet. Markov and Shapley learn
from all paths together, so any new conversion makes them refit and recredit everything.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import numpy as np
from sqlalchemy import delete, exists, func, insert, select
from sqlalchemy.orm import Session

from attribution.db_models import Conversion, ConversionKind, Credit, CreditRun, RunConversion
from attribution.models import (
    ConversionPath,
    Model,
    Touch,
    split_value,
    touch_weights,
)
from attribution.touchpoints import DEFAULT_LOOKBACK, Touchpoint, load_touchpoints, within
from core.db import dialect_insert, is_postgres
from core.models import table_of, utcnow

DATA_DRIVEN = (Model.markov, Model.shapley)
_ROWS_PER_INSERT = 5000


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

    def touch_key(self, touch: Touch) -> str:
        if self.level is Level.campaign and touch.campaign:
            return "campaign:" + touch.campaign
        return "channel:" + touch.channel


@dataclass(frozen=True)
class _Pending:
    id: int
    contact_id: uuid.UUID
    kind: str
    value_fen: int
    occurred_at: datetime
    ref: str


def current_run(session: Session, parameters: RunParameters) -> CreditRun:
    """The run for these parameters, brought up to date with every recorded conversion."""
    run = _locked_run(session, parameters)
    credited = select(func.count()).where(RunConversion.run_id == run.id)
    # Every credited conversion still exists (deleting one deletes its rows), so equal counts
    # mean nothing is waiting; far cheaper than looking for the missing ones on every report.
    if session.scalar(credited) == session.scalar(select(func.count()).select_from(Conversion)):
        return run
    not_credited = ~exists().where(
        RunConversion.run_id == run.id, RunConversion.conversion_id == Conversion.id
    )
    query = select(
        Conversion.id,
        Conversion.contact_id,
        Conversion.kind,
        Conversion.value_fen,
        Conversion.occurred_at,
        Conversion.external_ref,
    )
    if parameters.model in DATA_DRIVEN:
        session.execute(delete(Credit).where(Credit.run_id == run.id))
        session.execute(delete(RunConversion).where(RunConversion.run_id == run.id))
    else:
        query = query.where(not_credited)
    rows = session.execute(query)
    _credit(session, run, parameters, [_Pending(*row) for row in rows])
    run.computed_at = utcnow()
    session.flush()
    return run


def _locked_run(session: Session, parameters: RunParameters) -> CreditRun:
    """The run row, created if new and locked so that two requests never credit it twice
    (SQLite's writers are serialised already)."""
    session.execute(
        dialect_insert(session, table_of(CreditRun))
        .values(parameters=parameters.key, model=parameters.model.value, computed_at=utcnow())
        .on_conflict_do_nothing(index_elements=["parameters"])
    )
    query = select(CreditRun).where(CreditRun.parameters == parameters.key)
    if is_postgres(session):
        query = query.with_for_update()
    return session.scalars(query).one()


def _credit(
    session: Session, run: CreditRun, parameters: RunParameters, pending: list[_Pending]
) -> None:
    if not pending:
        return
    lookback = timedelta(days=parameters.lookback_days)
    everyone = parameters.model in DATA_DRIVEN
    contact_ids = None if everyone else {conversion.contact_id for conversion in pending}
    touchpoints = load_touchpoints(
        session,
        min(conversion.occurred_at for conversion in pending) - lookback,
        max(conversion.occurred_at for conversion in pending),
        contact_ids,
    )
    lead_times, opportunity_times = _milestones(session, contact_ids)
    paths = [
        _path(
            conversion,
            touchpoints.get(conversion.contact_id, []),
            lookback,
            lead_times,
            opportunity_times,
        )
        for conversion in pending
    ]
    if everyone:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, conversion in enumerate(pending):
            groups[conversion.kind].append(index)
        for indexes in groups.values():
            converters = {pending[i].contact_id for i in indexes}
            non_converting = [
                within(touches, touches[-1].at, lookback)
                for contact_id, touches in touchpoints.items()
                if contact_id not in converters and touches
            ]
            _store(
                session,
                run,
                [pending[i] for i in indexes],
                [paths[i] for i in indexes],
                parameters,
                non_converting,
            )
    else:
        _store(session, run, pending, paths, parameters, [])


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
    parameters: RunParameters,
    non_converting: list[tuple[Touchpoint, ...]],
) -> None:
    weights = touch_weights(
        paths,
        parameters.model,
        key=parameters.touch_key,
        non_converting=non_converting,
        half_life=timedelta(days=parameters.half_life_days),
        order=parameters.order,
    )
    lengths = np.asarray([len(path.touches) for path in paths], dtype=np.int64)
    values = np.asarray([path.value for path in paths], dtype=np.int64)
    credits = split_value(values, lengths, weights)
    path_of_touch = np.repeat(np.arange(len(paths)), lengths)
    totals = np.bincount(path_of_touch, weights=weights, minlength=len(paths))
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
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            session.execute(insert(table), rows[start : start + _ROWS_PER_INSERT])
