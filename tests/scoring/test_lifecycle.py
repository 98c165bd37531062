"""Fit grades, lifecycle stages and MQL promotion with its `became_mql` event."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from attribution.db_models import Conversion
from capture.models import Contact, Event
from core.clock import clock
from core.db import session_scope
from scoring import lifecycle, scorer
from scoring.engine import current_score
from scoring.models import ContactScore, LifecycleTransition, ScoreEntry
from tests.conftest import drain
from tests.scoring.conftest import T0, add_event, make_contact, page, process_feed

GOOD_FIT = {
    "traits": {"title": "CTO"},
    "email": "li.wei@yunqi.com.cn",
    "company": {"industry": "制造业", "employees": 500, "province": "上海"},
}


@pytest.fixture(autouse=True)
def frozen(backend: object) -> None:
    clock.freeze(T0)
    with session_scope() as session:
        scorer.scoring_settings(session)


def scores(contact_id: uuid.UUID) -> ContactScore:
    with session_scope() as session:
        row = session.get(ContactScore, contact_id)
        assert row is not None
        return row


def stage(contact_id: uuid.UUID) -> str | None:
    with session_scope() as session:
        return session.scalar(select(Contact.lifecycle_stage).where(Contact.id == contact_id))


def transitions(contact_id: uuid.UUID) -> list[tuple[str | None, str, str]]:
    with session_scope() as session:
        return [(t.from_stage, t.to_stage, t.cause) for t in lifecycle.history(session, contact_id)]


def test_fit_rules_give_points_and_a_grade(backend: object) -> None:
    good = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    student = make_contact(
        traits={"title": "学生"}, email="xiaoming@qq.com", company={"employees": "20"}
    )
    unknown = make_contact(known=False)
    with session_scope() as session:
        scorer.rescore_all(session)
    assert (scores(good).fit_points, scores(good).grade) == (65, "A")  # 20+15+15+5+10
    assert (scores(student).fit_points, scores(student).grade) == (-55, "F")  # -30-10-15
    assert (scores(unknown).fit_points, scores(unknown).grade) == (0, "D")


def test_a_contact_becomes_an_mql_when_score_and_grade_pass(backend: object) -> None:
    hot = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    poor_fit = make_contact(traits={"title": "实习生"}, email="a@163.com")
    anonymous = make_contact(known=False)
    for contact in (hot, poor_fit, anonymous):
        page(contact, T0 - timedelta(hours=1), "/pricing")  # 11 points
        process_feed()
        assert stage(contact) is None
        add_event(contact, T0, "form_submitted")  # 61 points
    process_feed()

    assert stage(hot) == "mql"
    assert transitions(hot) == [(None, "lead", "event"), ("lead", "mql", "score")]
    assert stage(poor_fit) == "lead"  # grade F
    assert stage(anonymous) == "lead"  # never reachable by sales while anonymous
    drain()
    with session_scope() as session:
        became = session.execute(
            select(Event.contact_id, Event.properties).where(Event.name == "became_mql")
        ).all()
    assert [row.contact_id for row in became] == [hot]
    assert "reached 60" in became[0].properties["reason"]
    drain()  # a second pass (or a redelivery) changes nothing
    process_feed()
    assert transitions(hot)[-1] == ("lead", "mql", "score")


def test_stages_never_move_backwards_on_their_own(backend: object) -> None:
    opportunity = make_contact(**GOOD_FIT, stage="opportunity")  # type: ignore[arg-type]
    disqualified = make_contact(**GOOD_FIT, stage="disqualified")  # type: ignore[arg-type]
    for contact in (opportunity, disqualified):
        add_event(contact, T0, "form_submitted")
        add_event(contact, T0, "whitepaper_downloaded")
    process_feed()
    assert stage(opportunity) == "opportunity"
    assert stage(disqualified) == "disqualified"
    assert transitions(opportunity) == [(None, "opportunity", "capture")]

    with session_scope() as session:
        contact = session.get(Contact, opportunity)
        assert contact is not None
        lifecycle.set_stage(session, contact, "lead", "deal fell through; nurture again", T0, None)
    assert stage(opportunity) == "lead"
    with session_scope() as session:
        last = lifecycle.history(session, opportunity)[-1]
        assert (last.from_stage, last.to_stage, last.cause) == ("opportunity", "lead", "manual")
        assert last.reason == "deal fell through; nurture again"


def test_outcome_events_move_stages_forward_in_order(backend: object) -> None:
    contact = make_contact(email="zhang@corp.cn", stage="subscriber")
    add_event(contact, T0 + timedelta(days=2), "deal_won", revenue=180000, currency="CNY")
    add_event(contact, T0 + timedelta(days=1), "opportunity_created")
    add_event(contact, T0, "form_submitted")
    process_feed()
    assert stage(contact) == "customer"
    assert transitions(contact) == [
        (None, "subscriber", "capture"),
        ("subscriber", "lead", "event"),
        ("lead", "opportunity", "event"),
        ("opportunity", "customer", "event"),
    ]
    with session_scope() as session:
        at = [t.occurred_at for t in lifecycle.history(session, contact)]
    assert at[1:] == [T0, T0 + timedelta(days=1), T0 + timedelta(days=2)]


def test_decay_cools_a_quiet_lead_without_moving_it_back(backend: object) -> None:
    contact = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    add_event(contact, T0, "form_submitted")
    add_event(contact, T0, "whitepaper_downloaded")
    process_feed()
    assert stage(contact) == "mql"
    clock.advance(timedelta(days=60))
    with session_scope() as session:
        scorer.rescore_all(session)
        row = session.get(ContactScore, contact)
        assert row is not None
        assert current_score(row, clock.now(), 30) == pytest.approx(65 / 4)
    assert stage(contact) == "mql"
    with session_scope() as session:
        assert (
            session.scalar(
                select(LifecycleTransition.to_stage)
                .where(LifecycleTransition.contact_id == contact)
                .order_by(LifecycleTransition.id.desc())
                .limit(1)
            )
            == "mql"
        )


def test_the_daily_decay_pass_writes_decay_down_and_reports_cooled_mqls(backend: object) -> None:
    contact = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    warm = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    add_event(contact, T0, "form_submitted")
    add_event(contact, T0, "whitepaper_downloaded")
    page(warm, T0)
    process_feed()
    assert stage(contact) == "mql"
    clock.advance(timedelta(days=60))
    with session_scope() as session:
        assert scorer.decay_scores(session, clock.now()) == 1  # warm cooled by less than 1 point
        decay = session.scalars(
            select(ScoreEntry).where(ScoreEntry.contact_id == contact, ScoreEntry.cause == "decay")
        ).one()
        assert decay.points == pytest.approx(-65 * 3 / 4)
        assert decay.occurred_at == clock.now()
    row = scores(contact)
    assert (row.behavior_score, row.behavior_as_of) == (pytest.approx(65 / 4), clock.now())
    assert scores(warm).behavior_as_of == T0
    assert stage(contact) == "mql"
    drain()
    with session_scope() as session:
        cooled = session.execute(
            select(Event.contact_id, Event.properties).where(Event.name == "cooled_below_mql")
        ).all()
    assert [c.contact_id for c in cooled] == [contact]
    assert cooled[0].properties == {"score": 16.25, "mql_threshold": 60.0}
    with session_scope() as session:
        assert scorer.decay_scores(session, clock.now()) == 0
    drain()
    with session_scope() as session:
        assert (
            len(session.scalars(select(Event).where(Event.name == "cooled_below_mql")).all()) == 1
        )


def milestones(contact_id: uuid.UUID) -> list[tuple[str, object, int]]:
    with session_scope() as session:
        return [
            (row.kind, row.occurred_at, row.value_fen)
            for row in session.scalars(
                select(Conversion)
                .where(Conversion.contact_id == contact_id)
                .order_by(Conversion.occurred_at, Conversion.id)
            )
        ]


def test_becoming_a_lead_and_an_mql_are_conversions_for_attribution(backend: object) -> None:
    hot = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    page(hot, T0 - timedelta(hours=1), "/pricing")
    add_event(hot, T0 - timedelta(minutes=5), "form_submitted")
    process_feed()
    assert stage(hot) == "mql"
    # The lead at the form's time, the MQL when the score crossed the threshold (now).
    assert milestones(hot) == [("lead", T0 - timedelta(minutes=5), 0), ("mql", T0, 0)]

    add_event(hot, T0 + timedelta(days=1), "whitepaper_downloaded")
    process_feed()
    with session_scope() as session:
        scorer.rescore_all(session)
    assert len(milestones(hot)) == 2  # once per contact, however often scoring runs


def test_a_manual_move_to_mql_and_a_stage_set_at_capture_are_milestones_too(
    backend: object,
) -> None:
    manual = make_contact(email="wang@corp.cn", stage="subscriber")
    imported = make_contact(email="liu@corp.cn", stage="lead")
    process_feed()
    with session_scope() as session:
        contact = session.get(Contact, manual)
        assert contact is not None
        lifecycle.set_stage(session, contact, "mql", "met at a trade fair", T0, None)
        scorer.rescore_all(session)  # records the imported contact's stage (reconcile_all)
    assert milestones(manual) == [("mql", T0, 0)]
    assert milestones(imported) == [("lead", T0, 0)]
