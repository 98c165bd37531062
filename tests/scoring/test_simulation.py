"""The simulator: reproducible, faithful to its documented process, and written through both
the batch path and the real capture path with its ground truth beside it."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from capture.models import Contact, Event, Identity, Visit
from core.clock import clock
from core.db import session_scope
from scoring.models import (
    SimulatedCampaignCost,
    SimulatedChannel,
    SimulatedContact,
    SimulationRun,
)
from scoring.simulation import SimulationError, simulate
from scoring.simulation.process import Population
from scoring.simulation.world import CAMPAIGNS, CHANNELS
from tests.conftest import truncate_all

END = datetime(2026, 6, 1, tzinfo=UTC)
# The channel ingest derives from each simulated channel's campaigns (GA4 grouping).
DERIVED_CHANNELS = {
    "baidu_paid": {"paid_search"},
    "baidu_organic": {"organic_search"},
    "wechat": {"paid_social", "organic_social"},
    "douyin": {"paid_social"},
    "xiaohongshu": {"organic_social"},
    "zhihu": {"organic_social"},
    "email": {"email"},
    "sms": {"sms"},
    "referral": {"referral"},
    "direct": {"direct"},
}


def fingerprint(seed: int, count: int) -> list[tuple]:
    return [
        (
            p.company.name,
            p.title,
            round(p.intent, 12),
            round(p.true_probability, 12),
            p.converted,
            [(round(a.at, 9), a.kind, a.name) for a in p.activities],
        )
        for p in Population(90, seed).people(count)
    ]


def test_a_seed_reproduces_the_population_and_another_seed_does_not() -> None:
    assert fingerprint(5, 200) == fingerprint(5, 200)
    assert fingerprint(5, 200) != fingerprint(6, 200)


def test_the_population_follows_the_documented_process() -> None:
    people = list(Population(180, 11).people(20_000))
    first_channels = Counter(p.first_channel for p in people)
    for channel in CHANNELS:
        assert first_channels[channel.name] / len(people) == pytest.approx(channel.share, abs=0.015)

    known = [p for p in people if p.identified_at is not None]
    anonymous = [p for p in people if p.identified_at is None]
    assert all(p.true_probability == 0 and not p.converted for p in anonymous)
    # Outcomes are drawn from the true probabilities: the rates agree within sampling error.
    expected = sum(p.true_probability for p in known)
    observed = sum(p.converted for p in known)
    assert abs(observed - expected) < 4 * expected**0.5

    def rate(group: list) -> float:
        return sum(p.converted for p in group) / len(group)

    with_form = [p for p in known if p.form_submitted]
    without_form = [p for p in known if not p.form_submitted]
    assert rate(with_form) > 2 * rate(without_form)
    students = [p for p in known if p.fit_log_odds < -1]
    assert rate(students) < rate(known)
    for p in people:
        assert p.activities == sorted(p.activities, key=lambda a: a.at)
        if p.converted:
            opened = next(a.at for a in p.activities if a.name == "opportunity_created")
            before = [a for a in p.activities if a.at < opened]
            assert all(a.name not in ("deal_won", "deal_lost") for a in before)
            assert p.converted_at == opened


def test_batch_simulation_writes_contacts_events_and_ground_truth(backend: object) -> None:
    clock.freeze(END)
    summary = simulate(400, 60, seed=21, end=END, progress=False)

    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 400
        assert session.scalar(select(func.count()).select_from(Event)) == summary.events
        known = session.scalar(select(func.count()).where(Contact.is_known.is_(True)))
        assert known == summary.known_contacts > 0
        truth = list(session.scalars(select(SimulatedContact)))
        assert len(truth) == 400 and all(t.contact_id is not None for t in truth)
        assert all(0 <= t.true_probability < 1 for t in truth)
        run = session.get(SimulationRun, summary.run_id)
        assert run is not None and run.end_at == END
        assert run.true_effects["channels"]["referral"] == 0.5

        channels = {c.channel: c for c in session.scalars(select(SimulatedChannel))}
        assert set(channels) == {c.name for c in CHANNELS}
        assert channels["direct"].incremental_conversions == 0
        assert channels["referral"].incremental_conversions > 0
        paid = [c for c in CAMPAIGNS if c.daily_cost_cny > 0]
        costs = list(session.scalars(select(SimulatedCampaignCost)))
        assert len(costs) == 60 * len(paid)
        assert all(
            0.85 * 1800 <= float(c.cost_cny) <= 1.15 * 4200 for c in costs if "baidu" in c.campaign
        )

        first_touch = dict(session.execute(select(Contact.id, Contact.first_touch_channel)).all())
        for t in truth:
            assert first_touch[t.contact_id] in DERIVED_CHANNELS[t.first_channel]
        assert session.scalar(select(func.max(Event.timestamp))) <= END
        visit_pages = session.scalar(select(func.sum(Visit.page_views)))
        page_events = session.scalar(select(func.count()).where(Event.type == "page"))
        assert visit_pages == page_events

    with pytest.raises(SimulationError, match="seed 21"):
        simulate(10, 60, seed=21, end=END, progress=False)


def test_the_same_seed_gives_the_same_rows_in_a_fresh_database(backend: object) -> None:
    def load() -> list[tuple]:
        simulate(150, 30, seed=8, end=END, progress=False)
        with session_scope() as session:
            return [
                tuple(row)
                for row in session.execute(
                    select(
                        Event.contact_id, Event.message_id, Event.timestamp, Event.name
                    ).order_by(Event.message_id)
                )
            ]

    first = load()
    truncate_all(backend)  # type: ignore[arg-type]
    assert load() == first


def test_bad_sizes_are_refused(backend: object) -> None:
    with pytest.raises(SimulationError, match="contacts"):
        simulate(0, 30, seed=1, progress=False)
    with pytest.raises(SimulationError, match="days"):
        simulate(10, 0, seed=1, progress=False)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(SimulationRun)) == 0


def test_capture_path_stores_the_same_population_as_the_batch_path(backend: object) -> None:
    clock.freeze(END)
    through_capture = simulate(60, 30, seed=31, end=END, via="capture", progress=False)
    with session_scope() as session:
        captured = {
            "events": session.scalar(select(func.count()).select_from(Event)),
            "pages": session.scalar(select(func.count()).where(Event.type == "page")),
            "known": session.scalar(select(func.count()).where(Contact.is_known.is_(True))),
            "channels": sorted(session.scalars(select(Visit.channel))),
        }
        truth = list(session.scalars(select(SimulatedContact)))
        assert len(truth) == 60 and all(t.contact_id is not None for t in truth)
        owners = dict(
            session.execute(
                select(Identity.value, Identity.contact_id).where(Identity.kind == "anonymous")
            ).all()
        )
        assert all(owners[t.anonymous_id] == t.contact_id for t in truth)
    truncate_all(backend)  # type: ignore[arg-type]
    through_batch = simulate(60, 30, seed=31, end=END, progress=False)
    with session_scope() as session:
        batched = {
            "events": session.scalar(select(func.count()).select_from(Event)),
            "pages": session.scalar(select(func.count()).where(Event.type == "page")),
            "known": session.scalar(select(func.count()).where(Contact.is_known.is_(True))),
            "channels": sorted(session.scalars(select(Visit.channel))),
        }
    assert through_capture.events == through_batch.events == captured["events"]
    assert captured == batched
