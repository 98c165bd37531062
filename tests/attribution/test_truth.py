"""Each model's channel shares against the simulator's true channel effects, on a small
simulated population written through the batch path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from attribution.credits import catch_up
from attribution.db_models import Conversion
from attribution.models import Model
from attribution.truth import compare_with_truth, record_simulated_conversions
from core.db import session_scope
from scoring.models import SimulatedChannel, SimulatedContact
from scoring.simulation import simulate
from tests.conftest import Backend

END = datetime(2026, 6, 1, tzinfo=UTC)


def test_models_are_compared_with_the_true_channel_effects(backend: Backend) -> None:
    summary = simulate(600, 120, seed=41, end=END, progress=False)
    with session_scope() as session:
        recorded = record_simulated_conversions(session, summary.run_id)
        again = record_simulated_conversions(session, summary.run_id)
    with session_scope() as session:
        won = session.scalar(
            select(func.count()).where(
                SimulatedContact.run_id == summary.run_id, SimulatedContact.won_at <= END
            )
        )
        assert recorded == again == summary.opportunities + won > 0
        deals = select(func.count()).where(Conversion.kind.in_(("opportunity", "won")))
        assert session.scalar(deals) == recorded
    catch_up()
    with session_scope() as session:
        comparison = compare_with_truth(session, summary.run_id)
        effects = dict(
            session.execute(
                select(SimulatedChannel.channel, SimulatedChannel.incremental_conversions)
            ).all()
        )
    total = sum(effects.values())
    assert comparison.true_shares == {c: round(v / total, 4) for c, v in effects.items()}
    assert comparison.opportunities == summary.opportunities
    assert {m.model for m in comparison.models} == {model.value for model in Model}
    for model in comparison.models:
        shares = model.credited_shares
        assert set(shares) == set(effects)
        assert sum(shares.values()) == pytest.approx(1, abs=1e-3)
        assert min(shares.values()) >= 0
        deviation = sum(abs(shares[c] - comparison.true_shares[c]) for c in effects)
        assert model.total_absolute_deviation == pytest.approx(deviation, abs=1e-3)
    by_model = {m.model: m.credited_shares for m in comparison.models}
    assert by_model["first_touch"] != by_model["last_touch"]
