"""How close each model comes to the truth on a simulated population (`nurture simulate`),
where every channel's true incremental effect is known.

The simulator decides who becomes an opportunity and saves, per channel, the opportunities
the channel truly caused (Σ over the people it touched of p − p without its effect). A model's
answer to the same question is the share of the simulated opportunities it credits to each
channel. Both are turned into shares of their total and compared by the total absolute
deviation Σ |credited share − true share| (0 is perfect, 2 the most wrong). A channel with a
negative true effect keeps its negative share; credits cannot go below zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from attribution.credits import DATA_DRIVEN, Level, RunParameters
from attribution.db_models import Conversion, ConversionKind, Credit, CreditRun
from attribution.models import Model
from core.db import dialect_insert
from core.models import table_of, utcnow
from scoring.models import SimulatedChannel, SimulatedContact, SimulationRun
from scoring.simulation.batch import campaign_touch
from scoring.simulation.world import CAMPAIGNS

SIMULATED_DEAL = "sim"


@dataclass(frozen=True)
class ModelDeviation:
    model: str
    total_absolute_deviation: float
    credited_shares: dict[str, float]


@dataclass(frozen=True)
class TruthComparison:
    simulation_run: int
    opportunities: int
    true_shares: dict[str, float]
    models: list[ModelDeviation]

    def as_json(self) -> dict[str, Any]:
        return {
            "simulation_run": self.simulation_run,
            "opportunities": self.opportunities,
            "true_shares": self.true_shares,
            "models": [
                {
                    "model": m.model,
                    "total_absolute_deviation": m.total_absolute_deviation,
                    "credited_shares": m.credited_shares,
                }
                for m in sorted(self.models, key=lambda m: m.total_absolute_deviation)
            ],
        }


def record_simulated_conversions(session: Session, simulation_run: int) -> int:
    """Records the simulated opportunities and won deals that happened within the simulated
    period as conversions (one statement; known ones are left alone). Returns how many
    conversions the period holds. Credit them afterwards (`credits.catch_up`)."""
    run = session.get(SimulationRun, simulation_run)
    if run is None:
        raise ValueError(f"there is no simulation run {simulation_run}")
    truth = SimulatedContact
    known = session.execute(
        select(truth.contact_id, truth.converted_at, truth.won_at, truth.revenue_cny).where(
            truth.run_id == simulation_run,
            truth.contact_id.is_not(None),
            truth.converted_at <= run.end_at,
        )
    ).all()
    now = utcnow()
    rows = []
    for contact_id, converted_at, won_at, revenue in known:
        won = won_at is not None and won_at <= run.end_at
        value = int(revenue * 100) if won and revenue is not None else 0
        rows.append(_conversion(contact_id, ConversionKind.opportunity, value, converted_at, now))
        if won:
            rows.append(_conversion(contact_id, ConversionKind.won, value, won_at, now))
    if rows:
        session.execute(
            dialect_insert(session, table_of(Conversion)).on_conflict_do_nothing(
                index_elements=["contact_id", "kind", "external_ref"]
            ),
            rows,
        )
    return len(rows)


def _conversion(contact_id: Any, kind: ConversionKind, value: int, at: Any, now: Any) -> dict:
    return {
        "contact_id": contact_id,
        "kind": kind.value,
        "value_fen": value,
        "occurred_at": at if at.tzinfo else at.replace(tzinfo=UTC),
        "external_ref": SIMULATED_DEAL,
        "recorded_at": now,
    }


def compare_with_truth(session: Session, simulation_run: int) -> TruthComparison:
    """Every standard run's channel shares of the simulated opportunities against the truth
    (the data-driven models at campaign level, whose keys each belong to one true channel)."""
    true_effects = dict(
        session.execute(
            select(SimulatedChannel.channel, SimulatedChannel.incremental_conversions).where(
                SimulatedChannel.run_id == simulation_run
            )
        ).all()
    )
    if not true_effects:
        raise ValueError(f"simulation run {simulation_run} saved no channel truth")
    true_shares = _shares(true_effects)
    simulated = select(SimulatedContact.contact_id).where(SimulatedContact.run_id == simulation_run)
    opportunities = (
        session.scalar(
            select(func.count()).where(
                Conversion.kind == ConversionKind.opportunity.value,
                Conversion.contact_id.in_(simulated),
            )
        )
        or 0
    )
    deviations = []
    for model in Model:
        parameters = RunParameters(model, Level.campaign if model in DATA_DRIVEN else Level.channel)
        credited = _credited_by_true_channel(session, parameters, simulated)
        shares = {channel: credited.get(channel, 0.0) for channel in true_shares}
        shares = _shares(shares) if any(shares.values()) else shares
        deviation = sum(abs(shares[c] - true_shares[c]) for c in true_shares)
        deviations.append(ModelDeviation(parameters.model.value, round(deviation, 4), shares))
    return TruthComparison(simulation_run, int(opportunities), true_shares, deviations)


def _credited_by_true_channel(
    session: Session, parameters: RunParameters, simulated: Any
) -> dict[str, float]:
    """Opportunities credited (sum of shares) per true channel, found from the touch's campaign
    (or, for touches without one, its channel) as the simulator landed it."""
    by_campaign, by_channel = _true_channel_of_touches()
    rows = session.execute(
        select(Credit.channel, Credit.campaign, func.sum(Credit.share))
        .join(CreditRun, CreditRun.id == Credit.run_id)
        .join(
            Conversion,
            and_(
                Conversion.id == Credit.conversion_id,
                Conversion.contact_id.in_(simulated),
            ),
        )
        .where(
            CreditRun.parameters == parameters.key,
            Credit.kind == ConversionKind.opportunity.value,
        )
        .group_by(Credit.channel, Credit.campaign)
    )
    credited: dict[str, float] = defaultdict(float)
    for channel, campaign, share in rows:
        true_channel = by_campaign.get(campaign) if campaign else by_channel.get(channel)
        credited[true_channel or "(other)"] += float(share or 0)
    return dict(credited)


def _true_channel_of_touches() -> tuple[dict[str, str], dict[str, str]]:
    by_campaign, by_channel = {}, {}
    for index, campaign in enumerate(CAMPAIGNS):
        touch = campaign_touch(index, 0)
        if touch.campaign:
            by_campaign[touch.campaign] = campaign.channel
        else:
            by_channel[touch.channel] = campaign.channel
    return by_campaign, by_channel


def _shares(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return {key: round(value / total, 4) if total else 0.0 for key, value in values.items()}
