"""`nurture simulate`: draws a population, writes it through the batch or capture path with a
progress bar, saves the ground truth beside it, then scores everyone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from itertools import islice
from typing import Literal

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from capture.sources import create_source
from core.clock import clock
from core.db import session_scope
from scoring import scorer
from scoring.models import (
    SimulatedCampaignCost,
    SimulatedChannel,
    SimulatedContact,
    SimulationRun,
)
from scoring.simulation.batch import BatchWriter
from scoring.simulation.capture import CaptureWriter
from scoring.simulation.process import ChannelTally, Person, Population
from scoring.simulation.world import CAMPAIGNS, CHANNELS, SITE, TrueEffects

Via = Literal["batch", "capture"]


class SimulationError(ValueError):
    """The simulation cannot run as asked (bad sizes, or this seed is already loaded)."""


@dataclass(frozen=True)
class SimulationSummary:
    run_id: int
    contacts: int
    known_contacts: int
    events: int
    opportunities: int
    customers: int
    seconds: float


def default_end() -> datetime:
    """Midnight UTC today, so runs on the same day give the same timestamps."""
    return datetime.combine(clock.now().date(), clock_time(), tzinfo=UTC)


def simulate(
    contacts: int,
    days: int,
    seed: int,
    end: datetime | None = None,
    via: Via = "batch",
    progress: bool = True,
    chunk_size: int = 2000,
) -> SimulationSummary:
    if contacts < 1 or contacts > 10_000_000:
        raise SimulationError("contacts must be between 1 and 10,000,000")
    if days < 1 or days > 3650:
        raise SimulationError("days must be between 1 and 3,650")
    started = time.monotonic()
    end = end or default_end()
    start = end - timedelta(days=days)
    with session_scope() as session:
        run = start_run(session, contacts, days, seed, start, end, via)
        run_id, source_id = run.id, run.source_id

    population = Population(days, seed)
    writer_class = BatchWriter if via == "batch" else CaptureWriter
    writer = writer_class(run_id, seed, source_id, start, days)
    tally = ChannelTally()
    people = tqdm(
        population.people(contacts),
        total=contacts,
        unit="contact",
        desc="simulating",
        disable=not progress,
    )
    events = 0
    for chunk in chunked(people, chunk_size):
        with session_scope() as session:
            writer.write(session, chunk)
        for person in chunk:
            tally.add(person, population.expected_deal_cny(person))
            events += sum(1 for a in person.activities if a.at <= days)

    with session_scope() as session:
        save_channel_truth(session, run_id, tally)
        save_campaign_costs(session, run_id, population, start)
        known, opportunities, customers = observed_outcomes(session, run_id, end)
    with session_scope() as session:
        scorer.rescore_all(session)
    return SimulationSummary(
        run_id=run_id,
        contacts=contacts,
        known_contacts=known,
        events=events,
        opportunities=opportunities,
        customers=customers,
        seconds=round(time.monotonic() - started, 1),
    )


def start_run(
    session: Session,
    contacts: int,
    days: int,
    seed: int,
    start: datetime,
    end: datetime,
    via: Via,
) -> SimulationRun:
    if session.scalar(select(SimulationRun.id).where(SimulationRun.seed == seed)) is not None:
        raise SimulationError(f"a simulation with seed {seed} is already in this database")
    source, _write_key = create_source(session, f"Simulated website (seed {seed})", [SITE])
    run = SimulationRun(
        seed=seed,
        contacts=contacts,
        days=days,
        start_at=start,
        end_at=end,
        via=via,
        source_id=source.id,
        true_effects=asdict(TrueEffects())
        | {"channels": {c.name: c.log_odds_effect for c in CHANNELS}},
    )
    session.add(run)
    session.flush()
    return run


def chunked(people: Iterator[Person] | tqdm, size: int) -> Iterator[list[Person]]:
    iterator = iter(people)
    while chunk := list(islice(iterator, size)):
        yield chunk


def save_channel_truth(session: Session, run_id: int, tally: ChannelTally) -> None:
    session.execute(
        insert(SimulatedChannel),
        [
            {
                "run_id": run_id,
                "channel": channel.name,
                "log_odds_effect": channel.log_odds_effect,
                "contacts_touched": tally.touched[index],
                "incremental_conversions": round(tally.conversions[index], 4),
                "incremental_revenue_cny": round(tally.revenue[index], 2),
            }
            for index, channel in enumerate(CHANNELS)
        ],
    )


def save_campaign_costs(
    session: Session, run_id: int, population: Population, start: datetime
) -> None:
    rows = []
    for day, index, cost in population.campaign_costs():
        campaign = CAMPAIGNS[index]
        rows.append(
            {
                "run_id": run_id,
                "day": (start + timedelta(days=day)).date(),
                "channel": campaign.channel,
                "campaign": campaign.name,
                "utm_source": campaign.utm_source,
                "utm_medium": campaign.utm_medium,
                "cost_cny": cost,
            }
        )
    if rows:
        session.execute(insert(SimulatedCampaignCost), rows)


def observed_outcomes(session: Session, run_id: int, end: datetime) -> tuple[int, int, int]:
    truth = SimulatedContact
    row = session.execute(
        select(
            func.count(truth.identified_at).filter(truth.identified_at <= end),
            func.count(truth.converted_at).filter(truth.converted_at <= end),
            func.count(truth.won_at).filter(truth.won_at <= end),
        ).where(truth.run_id == run_id)
    ).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)
