"""Conversions recorded, touchpoints read from capture's sessions and clicks, and credit runs
stored and kept up to date, on PostgreSQL and on SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from attribution.credits import (
    STANDARD_RUNS,
    Level,
    RunParameters,
    catch_up,
    refit,
    update_run,
)
from attribution.db_models import Conversion, Credit, CreditRun, RunConversion
from attribution.models import Model
from attribution.service import channel_credits_for_contact, record_conversion
from attribution.touchpoints import load_touchpoints, within
from core.db import session_scope
from tests.attribution.helpers import click, contact, day, visit
from tests.conftest import Backend


def test_recording_a_conversion_twice_keeps_one(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        first = record_conversion(session, person, "won", 100_00, day(3), "deal-1")
        again = record_conversion(session, person, "won", 999_00, day(4), "deal-1")
        other = record_conversion(session, person, "won", 50_00, day(5), "deal-2")
        lead = record_conversion(session, person, "lead", 0, day(1))
    assert again.id == first.id and again.value_fen == 100_00
    assert len({first.id, other.id, lead.id}) == 3
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Conversion)) == 3


def test_recording_refuses_bad_conversions(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        with pytest.raises(ValueError, match="signed"):
            record_conversion(session, person, "signed", 0, day(1))
        with pytest.raises(ValueError, match="value_fen"):
            record_conversion(session, person, "won", -1, day(1))
        with pytest.raises(ValueError, match="value_fen"):
            record_conversion(session, person, "won", 1.5, day(1))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timezone"):
            record_conversion(session, person, "won", 1, day(1).replace(tzinfo=None))
        assert session.scalar(select(func.count()).select_from(Conversion)) == 0


def test_touchpoints_come_from_sessions_and_message_clicks(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        search = visit(session, person, day(0), "paid_search", "spring")
        email_click = click(session, person, day(1), "email_clicked", journey_id="j1")
        visit(session, person, day(1) + timedelta(minutes=2), "email", "newsletter")
        sms_click = click(session, person, day(2), "SMS Clicked", campaign="flash")
        late_direct = visit(session, person, day(2) + timedelta(hours=2), "direct")
        click(session, person, day(3), "Email Opened")
        touches = load_touchpoints(session, day(-1), day(10))[person]
    assert [(t.source, t.ref, t.channel, t.campaign) for t in touches] == [
        ("visit", str(search), "paid_search", "spring"),
        ("email_click", str(email_click), "email", "journey:j1"),
        ("sms_click", str(sms_click), "sms", "flash"),
        ("visit", str(late_direct), "direct", None),
    ]
    assert [t.channel for t in within(touches, day(2), timedelta(days=1))] == ["email", "sms"]


def test_touchpoints_can_be_read_for_some_contacts_only(backend: Backend) -> None:
    with session_scope() as session:
        one, other = contact(session), contact(session)
        visit(session, one, day(0), "direct")
        visit(session, other, day(0), "referral")
        assert set(load_touchpoints(session, day(-1), day(1), {one})) == {one}


def _credits(session, run_id: int) -> dict[int, list[tuple[str, int]]]:  # type: ignore[no-untyped-def]
    rows = session.execute(
        select(Credit.conversion_id, Credit.channel, Credit.credit_fen)
        .where(Credit.run_id == run_id)
        .order_by(Credit.conversion_id, Credit.position)
    )
    paths: dict[int, list[tuple[str, int]]] = {}
    for conversion_id, channel, fen in rows:
        paths.setdefault(conversion_id, []).append((channel, fen))
    return paths


def test_a_rule_based_run_credits_every_touch_in_the_lookback_window(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        visit(session, person, day(-100), "display")  # outside the 90-day window
        visit(session, person, day(0), "paid_search", "spring")
        visit(session, person, day(5), "organic_social")
        visit(session, person, day(9), "direct")
        won = record_conversion(session, person, "won", 1000_01, day(10), "deal-1")
        stranger = contact(session)
        unseen = record_conversion(session, stranger, "won", 500_00, day(10), "deal-2")
        run = update_run(session, RunParameters(Model.linear))
        assert _credits(session, run.id) == {
            won.id: [("paid_search", 333_34), ("organic_social", 333_34), ("direct", 333_33)]
        }
        summaries = {
            row.conversion_id: (row.touches, row.unattributed_fen)
            for row in session.scalars(select(RunConversion).where(RunConversion.run_id == run.id))
        }
        assert summaries == {won.id: (3, 0), unseen.id: (0, 500_00)}


def test_rule_based_runs_only_credit_new_conversions(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        visit(session, person, day(0), "paid_search")
        record_conversion(session, person, "lead", 0, day(1))
        run = update_run(session, RunParameters(Model.first_touch))
        first_ids = set(session.scalars(select(Credit.id).where(Credit.run_id == run.id)))
        assert update_run(session, RunParameters(Model.first_touch)).id == run.id
        visit(session, person, day(2), "email")
        record_conversion(session, person, "opportunity", 80_00, day(3), "deal-1")
        update_run(session, RunParameters(Model.first_touch))
        rows = session.execute(
            select(Credit.id, Credit.kind, Credit.channel, Credit.credit_fen).where(
                Credit.run_id == run.id
            )
        ).all()
    assert first_ids <= {row.id for row in rows}
    assert sorted((row.kind, row.channel, row.credit_fen) for row in rows) == [
        ("lead", "paid_search", 0),
        ("opportunity", "email", 0),
        ("opportunity", "paid_search", 80_00),
    ]


def test_w_shaped_runs_find_the_lead_and_opportunity_touches(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        for n, channel in enumerate(["display", "paid_search", "email", "referral", "direct"]):
            visit(session, person, day(n), channel)
        record_conversion(session, person, "lead", 0, day(1) + timedelta(hours=1))
        record_conversion(session, person, "opportunity", 1000_00, day(3) + timedelta(hours=1), "d")
        won = record_conversion(session, person, "won", 1000_00, day(4) + timedelta(hours=1), "d")
        run = update_run(session, RunParameters(Model.w_shaped))
        assert _credits(session, run.id)[won.id] == [
            ("display", 300_00),
            ("paid_search", 300_00),
            ("email", 50_00),
            ("referral", 300_00),
            ("direct", 50_00),
        ]


def test_markov_runs_refit_when_a_conversion_arrives(backend: Backend) -> None:
    """Paths paid_search→email→conv and email→null: P = 1/2·1/2 + 1/2·1/2 = 1/2; without
    paid_search 1/4 (effect 1/2), without email 0 (effect 1): a 1 : 2 split.
    Adding referral→email→conv: P = 2/3; without paid_search or referral 4/9 (effect 1/3),
    without email 0 (effect 1): both conversions now split 1 : 3."""
    with session_scope() as session:
        a, b = contact(session), contact(session)
        visit(session, a, day(0), "paid_search")
        visit(session, a, day(1), "email")
        visit(session, b, day(0), "email")
        first = record_conversion(session, a, "won", 120_00, day(2), "d1")
        parameters = RunParameters(Model.markov, Level.channel)
        run = update_run(session, parameters)
        assert _credits(session, run.id) == {first.id: [("paid_search", 40_00), ("email", 80_00)]}
        c = contact(session)
        visit(session, c, day(0), "referral")
        visit(session, c, day(1), "email")
        second = record_conversion(session, c, "won", 100_00, day(2), "d2")
        assert update_run(session, parameters).id == run.id
        assert _credits(session, run.id) == {
            first.id: [("paid_search", 30_00), ("email", 90_00)],
            second.id: [("referral", 25_00), ("email", 75_00)],
        }


def test_campaign_level_runs_key_touches_by_campaign(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        visit(session, person, day(0), "email", "spring")
        visit(session, person, day(1), "email", "autumn")
        visit(session, person, day(2), "paid_search")
        won = record_conversion(session, person, "won", 300_00, day(3), "d")
        by_campaign = update_run(session, RunParameters(Model.shapley, Level.campaign))
        by_channel = update_run(session, RunParameters(Model.shapley, Level.channel))
        assert by_campaign.id != by_channel.id
        assert [fen for _, fen in _credits(session, by_campaign.id)[won.id]] == [100_00] * 3
        assert [fen for _, fen in _credits(session, by_channel.id)[won.id]] == [
            75_00,
            75_00,
            150_00,
        ]


def test_run_parameters_name_only_what_changes_credits() -> None:
    assert RunParameters(Model.linear, Level.campaign, half_life_days=3).key == "linear;lookback=90"
    assert RunParameters(Model.time_decay, half_life_days=3.5).key == (
        "time_decay;lookback=90;half_life=3.5"
    )
    assert RunParameters(Model.markov, order=2).key == "markov;lookback=90;level=channel;order=2"
    with pytest.raises(ValueError, match="lookback_days"):
        RunParameters(Model.linear, lookback_days=0)
    with pytest.raises(ValueError, match="order"):
        RunParameters(Model.markov, order=9)


def test_markov_credits_new_conversions_from_the_stored_fit_until_a_refit(
    backend: Backend,
) -> None:
    """Fit on paid_search→email→conv and email→null: effects 1/2 and 1 (see above). A second
    paid_search→email conversion is credited 1 : 2 from that fit, the first is left alone.
    The refit sees paid_search→email→conv twice and email→null: P = 2/3, without paid_search
    2/9 (effect 2/3), without email 0 (effect 1): both conversions split 2 : 3."""
    parameters = RunParameters(Model.markov, Level.channel)
    with session_scope() as session:
        a, b, d = contact(session), contact(session), contact(session)
        visit(session, a, day(0), "paid_search")
        visit(session, a, day(1), "email")
        visit(session, b, day(0), "email")
        first = record_conversion(session, a, "won", 120_00, day(2), "d1")
        run = update_run(session, parameters)
        assert (run.fit_version, run.fitted_conversions) == (1, 1)
        assert run.fit == {"won": {"channel:paid_search": 0.5, "channel:email": 1.0}}
        visit(session, d, day(0), "paid_search")
        visit(session, d, day(1), "email")
        second = record_conversion(session, d, "won", 100_00, day(2), "d2")
        assert update_run(session, parameters, [second.id]).fit_version == 1
        assert _credits(session, run.id) == {
            first.id: [("paid_search", 40_00), ("email", 80_00)],
            second.id: [("paid_search", 33_33), ("email", 66_67)],
        }
        refitted = refit(session, parameters)
        assert (refitted.id, refitted.fit_version, refitted.fitted_conversions) == (run.id, 2, 2)
        assert _credits(session, run.id) == {
            first.id: [("paid_search", 48_00), ("email", 72_00)],
            second.id: [("paid_search", 40_00), ("email", 60_00)],
        }


def test_a_recorded_conversion_is_credited_in_every_standard_run_by_the_worker(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.app import celery_app

    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    monkeypatch.setitem(celery_app.conf, "task_eager_propagates", True)
    with session_scope() as session:
        person = contact(session)
        visit(session, person, day(0), "paid_search", "spring")
        visit(session, person, day(1), "email", "newsletter")
    with session_scope() as session:
        won = record_conversion(session, person, "won", 100_01, day(2), "d1")
    with session_scope() as session:
        runs = {run.parameters: run.id for run in session.scalars(select(CreditRun))}
        assert set(runs) == {parameters.key for parameters in STANDARD_RUNS}
        credited = session.execute(
            select(Credit.run_id, func.sum(Credit.credit_fen))
            .where(Credit.conversion_id == won.id)
            .group_by(Credit.run_id)
        ).all()
        assert dict(credited) == dict.fromkeys(runs.values(), 100_01)


def test_channel_credits_for_a_contact_per_model(backend: Backend) -> None:
    with session_scope() as session:
        person = contact(session)
        visit(session, person, day(0), "paid_search", "spring")
        visit(session, person, day(1), "email", "newsletter")
        visit(session, person, day(1.5), "email", "newsletter")
        record_conversion(session, person, "opportunity", 300_00, day(2), "d1")
        record_conversion(session, person, "won", 300_00, day(3), "d1")
        stranger = contact(session)
        visit(session, stranger, day(0), "display")
        record_conversion(session, stranger, "won", 999_00, day(3), "d2")
    catch_up()
    with session_scope() as session:
        found = channel_credits_for_contact(session, person)
    assert [(c.channel, c.campaign, c.touches) for c in found] == [
        ("email", "newsletter", 2),
        ("paid_search", "spring", 1),
    ]
    email, search = found
    assert set(email.revenue_fen) == {model.value for model in Model}
    assert (email.revenue_fen["linear"], search.revenue_fen["linear"]) == (200_00, 100_00)
    assert (email.revenue_fen["first_touch"], search.revenue_fen["first_touch"]) == (0, 300_00)
    assert (email.pipeline_fen["last_touch"], search.pipeline_fen["last_touch"]) == (300_00, 0)
    assert all(email.revenue_fen[m.value] + search.revenue_fen[m.value] == 300_00 for m in Model)
