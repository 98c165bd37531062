"""Rule scores: each rule type, daily limits, first-time-only, decay arithmetic, the ledger
adding up (decay lines included), redelivery, and rescoring giving what incremental scoring
gave."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from capture import contacts
from capture.models import Contact
from core import feed
from core.clock import clock
from core.db import session_scope
from scoring import scorer
from scoring.engine import active_rules, current_score, decayed, rescore
from scoring.models import ContactScore, ScoreEntry, ScoringRule, ScoringSettings
from tests.scoring.conftest import T0, add_event, make_contact, page, process_feed


def score(contact_id: uuid.UUID) -> float:
    with session_scope() as session:
        row = session.get(ContactScore, contact_id)
        settings = scorer.scoring_settings(session)
        return 0.0 if row is None else current_score(row, clock.now(), settings.half_life_days)


def ledger_points(contact_id: uuid.UUID) -> dict[str, float]:
    with session_scope() as session:
        rows = session.execute(
            select(ScoringRule.name, func.sum(ScoreEntry.points))
            .join(ScoringRule, ScoringRule.id == ScoreEntry.rule_id)
            .where(ScoreEntry.contact_id == contact_id)
            .group_by(ScoringRule.name)
        ).all()
    return {name: total for name, total in rows}


def assert_ledger_complete() -> int:
    """For every stored score: its ledger lines sum to it at its as-of time, and reading it now
    (stored × decay since then) equals the awards and adjustments replayed and decayed to now.
    Returns how many scores were checked."""
    now = clock.now()
    with session_scope() as session:
        half_life = scorer.scoring_settings(session).half_life_days
        lines: dict[uuid.UUID, list[tuple[str, float, object]]] = defaultdict(list)
        for entry, rule_points in session.execute(
            select(ScoreEntry, ScoringRule.points).outerjoin(
                ScoringRule, ScoringRule.id == ScoreEntry.rule_id
            )
        ):
            points = rule_points if entry.cause == "rule" else entry.points
            lines[entry.contact_id].append((entry.cause, points, entry.occurred_at))
        stored = session.scalars(select(ContactScore)).all()
        for row in stored:
            own = lines[row.contact_id]
            assert sum(points for _, points, _ in own) == pytest.approx(
                row.behavior_score, abs=1e-6
            )
            replayed = sum(
                decayed(p, at, now, half_life) for cause, p, at in own if cause != "decay"
            )
            assert current_score(row, now, half_life) == pytest.approx(replayed, abs=1e-6)
        return len(stored)


def rule_named(name: str) -> ScoringRule:
    with session_scope() as session:
        rule = session.scalar(select(ScoringRule).where(ScoringRule.name == name))
        assert rule is not None
        return rule


@pytest.fixture(autouse=True)
def frozen(backend: object) -> None:
    clock.freeze(T0)
    with session_scope() as session:
        scorer.scoring_settings(session)


def test_default_behaviour_rules_award_their_points(backend: object) -> None:
    contact = make_contact(email="li@corp.cn")
    add_event(contact, T0, "form_submitted", form="demo")
    page(contact, T0, "/pricing")
    page(contact, T0, "/")
    add_event(contact, T0, "email_clicked")
    add_event(contact, T0, "whitepaper_downloaded")
    add_event(contact, T0, "email_opened")  # no rule: no points
    process_feed()

    assert ledger_points(contact) == {
        "Form submitted": 50,
        "Pricing page viewed": 10,
        "Page view": 2,
        "Email clicked": 5,
        "Whitepaper downloaded": 15,
    }
    assert score(contact) == pytest.approx(82)


def test_negative_rules_property_filters_and_first_time_only(backend: object) -> None:
    contact = make_contact(email="wang@corp.cn")
    add_event(contact, T0, "email_bounced", bounce_type="soft")
    add_event(contact, T0, "email_bounced", bounce_type="hard")
    add_event(contact, T0 + timedelta(days=1), "email_bounced", bounce_type="hard")
    add_event(contact, T0, "email_unsubscribed")
    add_event(contact, T0 + timedelta(days=2), "email_unsubscribed")
    process_feed()
    assert ledger_points(contact) == {"Hard bounce": -10, "Unsubscribed": -20}


def test_the_daily_limit_counts_days_in_the_business_time_zone(backend: object) -> None:
    contact = make_contact()
    evening = T0.replace(hour=15, minute=0)  # 23:00 in Shanghai
    for minute in range(12):
        page(contact, evening + timedelta(minutes=minute))
    after_midnight = T0.replace(hour=16, minute=5)  # 00:05 the next day in Shanghai
    page(contact, after_midnight)
    page(contact, after_midnight + timedelta(minutes=1))
    process_feed()
    assert ledger_points(contact) == {"Page view": 12}  # 10 capped + 2 on the new day


def test_decay_halves_the_score_every_half_life_and_reading_is_exact(backend: object) -> None:
    contact = make_contact()
    add_event(contact, T0, "form_submitted")
    process_feed()
    clock.advance(timedelta(days=30))
    assert score(contact) == pytest.approx(25)
    clock.advance(timedelta(days=30))
    assert score(contact) == pytest.approx(12.5)
    add_event(contact, clock.now(), "whitepaper_downloaded")
    process_feed()
    assert score(contact) == pytest.approx(27.5)
    clock.advance(timedelta(days=15))
    assert score(contact) == pytest.approx(50 * 0.5**2.5 + 15 * 0.5**0.5)
    assert decayed(8, T0, T0 + timedelta(days=90), 30) == pytest.approx(1)


def test_a_shorter_half_life_rescores_every_contact(backend: object) -> None:
    contact = make_contact()
    add_event(contact, T0, "form_submitted")
    process_feed()
    clock.advance(timedelta(days=10))
    with session_scope() as session:
        session.execute(update(ScoringSettings).values(half_life_days=10))
        scorer.rescore_all(session)
    assert score(contact) == pytest.approx(25)


def test_a_redelivered_batch_changes_nothing(backend: object) -> None:
    contact = make_contact()
    add_event(contact, T0, "form_submitted")
    for minute in range(12):
        page(contact, T0 + timedelta(minutes=minute))
    process_feed()
    clock.advance(timedelta(minutes=11))
    with session_scope() as session:
        session.execute(update(feed.FeedCursor).values(last_id=0))
    process_feed()
    assert ledger_points(contact) == {"Form submitted": 50, "Page view": 10}
    assert score(contact) == pytest.approx(60, rel=1e-3)


def test_rescoring_everything_gives_what_incremental_scoring_gave(backend: object) -> None:
    """Random event streams scored batch by batch as they arrive (each batch later than the
    last, shuffled within), then rederived from scratch in set-based SQL."""
    rng = random.Random(4)
    contacts = [make_contact() for _ in range(6)]
    names = ["form_submitted", "email_clicked", "email_unsubscribed", "whitepaper_downloaded"]
    for batch in range(5):
        for _ in range(rng.randint(5, 25)):
            contact = rng.choice(contacts)
            at = T0 + timedelta(hours=batch * 20 + rng.uniform(0, 20))
            if rng.random() < 0.6:
                page(contact, at, rng.choice(["/", "/pricing", "/pricing/enterprise", "/docs"]))
            else:
                add_event(contact, at, rng.choice(names))
        process_feed()
    clock.advance(timedelta(days=5))

    def snapshot() -> tuple[set, dict]:
        with session_scope() as session:
            lines = set(session.execute(select(ScoreEntry.rule_id, ScoreEntry.event_id)).all())
        return lines, {c: round(score(c), 9) for c in contacts}

    incremental = snapshot()
    with session_scope() as session:
        scorer.rescore_all(session)
    assert snapshot() == incremental


def test_changing_a_rule_rescores_every_contact(backend: object) -> None:
    first, second = make_contact(), make_contact()
    page(first, T0, "/pricing")
    page(second, T0, "/pricing/team")
    page(second, T0 + timedelta(minutes=1), "/pricing")
    page(second, T0 + timedelta(minutes=2), "/pricing")
    process_feed()
    assert score(first) == pytest.approx(11) and score(second) == pytest.approx(23, rel=1e-4)

    pricing = rule_named("Pricing page viewed")
    with session_scope() as session:
        rule = session.get(ScoringRule, pricing.id)
        assert rule is not None
        rule.points, rule.daily_limit, rule.version = 25, None, rule.version + 1
        session.flush()
        assert scorer.rescore_rule(session, rule.id, rule.version)
    assert score(first) == pytest.approx(26) and score(second) == pytest.approx(78, rel=1e-4)
    with session_scope() as session:
        versions = set(
            session.scalars(select(ScoreEntry.rule_version).where(ScoreEntry.rule_id == pricing.id))
        )
        assert versions == {pricing.version + 1}
        assert not scorer.rescore_rule(session, pricing.id, pricing.version)  # superseded


def test_the_stored_row_is_not_rewritten_when_nothing_changed(backend: object) -> None:
    contact = make_contact()
    add_event(contact, T0, "form_submitted")
    process_feed()
    with session_scope() as session:
        before = session.get(ContactScore, contact)
        assert before is not None
        stamp = before.behavior_as_of
    clock.advance(timedelta(days=3))
    with session_scope() as session:
        scorer.rescore_all(session)
        after = session.get(ContactScore, contact)
        assert after is not None and after.behavior_as_of == stamp


def test_a_change_of_points_alone_reprices_earlier_awards_exactly(backend: object) -> None:
    contact = make_contact()
    page(contact, T0 - timedelta(days=30), "/pricing")
    page(contact, T0 - timedelta(days=10), "/pricing")
    process_feed()
    pricing = rule_named("Pricing page viewed")
    with session_scope() as session:
        rule = session.get(ScoringRule, pricing.id)
        assert rule is not None
        rule.points, rule.version = 25, rule.version + 1
        scorer.record_version(session, rule, "updated", None)
        session.flush()
        awards = select(func.count()).where(ScoreEntry.cause == "rule")
        awards_before = session.scalar(awards)
        assert scorer.rescore_rule(session, rule.id, rule.version)
        assert session.scalar(awards) == awards_before
    expected = 26 * 0.5 + 26 * 0.5 ** (10 / 30)
    assert score(contact) == pytest.approx(expected)
    clock.advance(timedelta(days=7))
    page(contact, clock.now(), "/pricing")
    process_feed()
    repriced = score(contact)
    assert repriced == pytest.approx(expected * 0.5 ** (7 / 30) + 26)
    with session_scope() as session:
        scorer.rescore_all(session)  # rederived from the events: the same score
    assert score(contact) == pytest.approx(repriced)


def test_every_change_is_in_the_ledger_and_the_ledger_sums_to_the_stored_score(
    backend: object,
) -> None:
    """New events, a manual adjustment, a change of points, a change of conditions, the decay
    pass and a half-life change: after each, the ledger (decay lines included) sums to every
    stored score, and reading a score equals replaying its awards."""
    rng = random.Random(9)
    contacts = [make_contact() for _ in range(5)]
    for day in range(0, 40, 4):
        clock.freeze(T0 + timedelta(days=day))
        for contact in contacts:
            if rng.random() < 0.6:
                page(contact, clock.now() - timedelta(hours=rng.uniform(0, 30)), "/pricing")
            if rng.random() < 0.2:
                add_event(contact, clock.now(), rng.choice(["form_submitted", "email_clicked"]))
        process_feed()
        assert_ledger_complete()
    assert assert_ledger_complete() == len(contacts)
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(ScoreEntry.cause == "decay"))

    clock.advance(timedelta(days=3))
    with session_scope() as session:
        entry = ScoreEntry(
            contact_id=contacts[0],
            cause="manual",
            points=30,
            occurred_at=clock.now(),
            recorded_at=clock.now(),
        )
        session.add(entry)
        session.flush()
        k = scorer.knobs(session, clock.now())
        rescore(session, k, active_rules(session, "fit"), clock.now(), [contacts[0]])
    assert_ledger_complete()

    pricing = rule_named("Pricing page viewed")
    for change in ({"points": 17.0}, {"daily_limit": 1}):
        clock.advance(timedelta(days=2))
        with session_scope() as session:
            rule = session.get(ScoringRule, pricing.id)
            assert rule is not None
            for key, value in change.items():
                setattr(rule, key, value)
            rule.version += 1
            scorer.record_version(session, rule, "updated", None)
            session.flush()
            assert scorer.rescore_rule(session, rule.id, rule.version)
        assert_ledger_complete()

    clock.advance(timedelta(days=20))
    before = {c: score(c) for c in contacts}
    with session_scope() as session:
        assert scorer.decay_scores(session, clock.now()) > 0
    assert_ledger_complete()
    assert {c: score(c) for c in contacts} == pytest.approx(before)

    with session_scope() as session:
        session.execute(update(ScoringSettings).values(half_life_days=12))
        scorer.rescore_all(session)
    assert_ledger_complete()


def test_erasing_a_contact_erases_its_ledger_and_the_merged_contacts_ledgers(
    backend: object,
) -> None:
    kept, erased, merged = make_contact(), make_contact(), make_contact()
    for contact in (kept, erased, merged):
        page(contact, T0 - timedelta(days=2), "/pricing")
    process_feed()

    def lines_of(contact_id: uuid.UUID) -> int:
        with session_scope() as session:
            count = select(func.count()).where(ScoreEntry.contact_id == contact_id)
            return int(session.scalar(count) or 0)

    kept_lines = lines_of(kept)
    with session_scope() as session:
        session.execute(update(Contact).where(Contact.id == merged).values(merged_into_id=erased))
        contacts.delete_contact(session, erased, uuid.uuid4())
    assert kept_lines and lines_of(erased) and lines_of(merged)
    process_feed()
    assert lines_of(erased) == lines_of(merged) == 0
    assert lines_of(kept) == kept_lines


def test_a_fit_rule_change_regrades_scored_contacts_and_scores_the_rest(backend: object) -> None:
    manager = make_contact({"title": "IT经理"})
    engineer = make_contact({"title": "工程师"})
    page(manager, T0 - timedelta(days=1), "/pricing")
    page(engineer, T0 - timedelta(days=1), "/pricing")
    process_feed()
    never_scored = make_contact({"title": "销售经理"})  # no change has reached scoring yet

    def fit_and_grade(contact_id: uuid.UUID) -> tuple[float, str] | None:
        with session_scope() as session:
            row = session.get(ContactScore, contact_id)
            return None if row is None else (row.fit_points, row.grade)

    engineer_before = fit_and_grade(engineer)
    with session_scope() as session:
        behavior_before = session.get_one(ContactScore, manager).behavior_score
        rule = session.scalars(select(ScoringRule).where(ScoringRule.name == "Manager")).one()
        rule.points, rule.version = 45, rule.version + 1
        session.flush()
        assert scorer.rescore_rule(session, rule.id, rule.version)
    manager_after = fit_and_grade(manager)
    assert manager_after is not None and manager_after[0] == pytest.approx(45)
    assert fit_and_grade(engineer) == engineer_before
    assert fit_and_grade(never_scored) == manager_after
    with session_scope() as session:
        assert session.get_one(ContactScore, manager).behavior_score == behavior_before
    assert assert_ledger_complete() == 3
