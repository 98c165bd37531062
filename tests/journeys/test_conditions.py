"""The condition language: validation names the bad path; compiled SQL means the same on
PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from core.clock import clock
from core.db import is_postgres, session_scope
from journeys.conditions import Compiler, ConditionError, parse, regex_problem
from journeys.models import Segment, SegmentMember
from scoring.models import SETTINGS_ROW_ID, ContactScore, ScoringSettings
from tests.conftest import Backend
from tests.journeys.conftest import T0, make_contact, make_event


@pytest.mark.parametrize(
    ("tree", "path", "words"),
    [
        ({"field": "traits.plan", "op": "like", "value": "x"}, "condition.op", "unknown operator"),
        ({"field": "shoe_size", "op": "eq", "value": 1}, "condition.field", "unknown field"),
        ({"field": "page_views", "op": "gt", "value": "ten"}, "condition.value", "number"),
        ({"field": "traits.plan", "op": "eq"}, "condition.value", "required"),
        ({"field": "traits.a b", "op": "eq", "value": 1}, "condition.field", "key"),
        ({"field": "traits.x", "op": "in", "value": [1, "a"]}, "condition.value", "same type"),
        ({"field": "created_at", "op": "gt", "value": "2026-01-01"}, "condition.value", "zone"),
        (
            {
                "and": [
                    {"reachable": "email"},
                    {"field": "traits.n", "op": "matches", "value": "(a+)+$"},
                ]
            },
            "condition.and[1].value",
            "slow regex",
        ),
        ({"or": []}, "condition.or", "non-empty"),
        ({"not": {"frobnicate": 1}}, "condition.not", "unknown condition"),
        ({"event": "Signup", "at_least": 3, "at_most": 1}, "condition.at_most", "below"),
        ({"event": "Signup", "within_days": 0}, "condition.within_days", "whole number"),
        (
            {"event": "Signup", "where": [{"field": "properties.plan", "op": "nope", "value": 1}]},
            "condition.where[0].op",
            "unknown operator",
        ),
        ({"in_segment": "not-an-id"}, "condition.in_segment", "segment id"),
        ({"reachable": "fax"}, "condition.reachable", "email"),
        ({"field": "score", "op": "gte", "value": "high"}, "condition.value", "number"),
        ({"field": "score", "op": "contains", "value": "1"}, "condition.op", "unknown operator"),
        ({"field": "grade", "op": "gte", "value": "G"}, "condition.value", "A, B"),
        ({"field": "probability", "op": "gt", "value": 1.5}, "condition.value", "0 to 1"),
        ({"field": "lifecycle_stage", "op": "eq", "value": "vip"}, "condition.value", "mql"),
        (
            {"field": "lifecycle_stage", "op": "gte", "value": "disqualified"},
            "condition.value",
            "subscriber, lead",
        ),
    ],
)
def test_invalid_conditions_name_the_path(tree: Any, path: str, words: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse(tree)
    assert caught.value.path == path
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        ("^/pricing", False),
        ("[a-z]+@example\\.com$", False),
        ("(ab)+c", False),
        ("(a+)+", True),
        ("(a|aa)*", True),
        ("(x(a*))*", True),
        ("(a)\\1", True),
        ("(?=a)", True),
        ("a{2,3}", False),
        ("(", True),
        ("a" * 201, True),
    ],
)
def test_slow_or_unportable_regexes_are_refused(pattern: str, refused: bool) -> None:
    assert (regex_problem(pattern) is not None) is refused


def matching(tree: Any, bulk: bool = False) -> set[uuid.UUID]:
    with session_scope() as session:
        compiler = Compiler(clock.now(), is_postgres(session), bulk=bulk)
        return set(session.scalars(compiler.members(parse(tree))))


def test_trait_column_and_date_comparisons(backend: Backend) -> None:
    clock.freeze(T0)
    pro = make_contact(
        {"plan": "pro", "seats": 12, "trial": True, "trial_ends_at": "2026-03-04T00:00:00Z"},
        email="a@example.com",
        lifecycle_stage="mql",
        tags=["vip", "cn"],
        page_views=30,
    )
    free = make_contact(
        {"plan": "free", "seats": 2, "trial_ends_at": "2026-02-01T00:00:00Z", "city": "Beijing"},
        email="b@corp.cn",
        lifecycle_stage="lead",
        tags=["cn"],
        page_views=3,
    )
    odd = make_contact({"plan": 5, "seats": "12"}, phone="+8613800138000")
    merged = make_contact({"plan": "pro"})
    with session_scope() as session:
        from sqlalchemy import update

        from capture.models import Contact

        session.execute(update(Contact).where(Contact.id == merged).values(merged_into_id=pro))

    cases: list[tuple[Any, set[uuid.UUID]]] = [
        ({"field": "traits.plan", "op": "eq", "value": "pro"}, {pro}),
        ({"field": "traits.plan", "op": "neq", "value": "pro"}, {free, odd}),
        ({"field": "traits.plan", "op": "eq", "value": 5}, {odd}),
        ({"field": "traits.seats", "op": "gt", "value": 10}, {pro}),
        ({"field": "traits.seats", "op": "lte", "value": 2}, {free}),
        ({"field": "traits.seats", "op": "eq", "value": "12"}, {odd}),
        ({"field": "traits.trial", "op": "eq", "value": True}, {pro}),
        ({"field": "traits.city", "op": "exists", "value": True}, {free}),
        ({"field": "traits.city", "op": "exists", "value": False}, {pro, odd}),
        ({"field": "traits.city", "op": "contains", "value": "jin"}, {free}),
        ({"field": "traits.city", "op": "contains", "value": "JIN"}, set()),
        ({"field": "traits.plan", "op": "starts_with", "value": "fr"}, {free}),
        ({"field": "traits.plan", "op": "in", "value": ["pro", "enterprise"]}, {pro}),
        ({"field": "traits.plan", "op": "matches", "value": "^(pro|free)$"}, {pro, free}),
        ({"field": "traits.trial_ends_at", "op": "within_next_days", "value": 3}, {pro}),
        ({"field": "traits.trial_ends_at", "op": "more_than_days_ago", "value": 20}, {free}),
        ({"field": "traits.trial_ends_at", "op": "within_last_days", "value": 20}, set()),
        ({"field": "traits.trial_ends_at", "op": "anniversary", "value": 2}, {pro}),
        ({"field": "traits.trial_ends_at", "op": "anniversary", "value": 0}, set()),
        ({"field": "traits.plan", "op": "anniversary", "value": 0}, set()),
        ({"field": "email", "op": "contains", "value": "@corp"}, {free}),
        ({"field": "email", "op": "exists", "value": False}, {odd}),
        ({"field": "lifecycle_stage", "op": "in", "value": ["mql", "sql"]}, {pro}),
        ({"field": "page_views", "op": "gte", "value": 3}, {pro, free}),
        ({"field": "tags", "op": "contains", "value": "vip"}, {pro}),
        ({"field": "tags", "op": "exists", "value": False}, {odd}),
        ({"field": "created_at", "op": "within_last_days", "value": 1}, {pro, free, odd}),
        ({"field": "created_at", "op": "lt", "value": "2026-01-01T00:00:00+00:00"}, set()),
        ({"not": {"field": "traits.plan", "op": "eq", "value": "pro"}}, {free, odd}),
        (
            {
                "or": [
                    {"field": "traits.plan", "op": "eq", "value": 5},
                    {
                        "and": [
                            {"field": "tags", "op": "contains", "value": "cn"},
                            {"not": {"field": "tags", "op": "contains", "value": "vip"}},
                        ]
                    },
                ]
            },
            {free, odd},
        ),
    ]
    for tree, expected in cases:
        assert matching(tree) == expected, tree


def test_behaviour_counts_windows_and_property_filters(backend: Backend) -> None:
    clock.freeze(T0)
    keen = make_contact()
    once = make_contact()
    stale = make_contact()
    for days_ago in (1, 2, 3):
        make_event(keen, "Page Viewed", {"plan": "pro"}, days_ago, url="https://x.cn/pricing")
    make_event(once, "Page Viewed", {"plan": "free"}, 1, url="https://x.cn/pricing")
    make_event(once, "Form Submitted", {"form_id": "demo"}, 2)
    make_event(stale, "Page Viewed", {"plan": "pro"}, 40, url="https://x.cn/blog")

    pricing = {"field": "url", "op": "contains", "value": "/pricing"}
    cases: list[tuple[Any, set[uuid.UUID]]] = [
        ({"event": "Page Viewed"}, {keen, once, stale}),
        ({"event": "Page Viewed", "within_days": 7}, {keen, once}),
        ({"event": "Page Viewed", "at_least": 2, "within_days": 7}, {keen}),
        ({"event": "Page Viewed", "at_most": 1}, {once, stale}),
        ({"event": "Page Viewed", "at_least": 1, "at_most": 2}, {once, stale}),
        ({"event": "Page Viewed", "at_most": 0}, set()),
        ({"event": "Page Viewed", "where": [pricing]}, {keen, once}),
        (
            {
                "event": "Page Viewed",
                "where": [{"field": "properties.plan", "op": "eq", "value": "pro"}],
            },
            {keen, stale},
        ),
        ({"not_done": "Page Viewed", "within_days": 7}, {stale}),
        ({"not_done": "Form Submitted"}, {keen, stale}),
        ({"type": "track", "at_least": 4}, set()),
        ({"type": "track", "at_least": 3}, {keen}),
        ({"not": {"event": "Page Viewed", "at_least": 2}}, {once, stale}),
    ]
    for tree, expected in cases:
        assert matching(tree) == expected, tree
        assert matching(tree, bulk=True) == expected, ("bulk", tree)


def test_reachability_and_segment_membership(backend: Backend) -> None:
    clock.freeze(T0)
    ok = make_contact(email="ok@example.com", email_consent="granted")
    unsubscribed = make_contact(
        email="u@example.com", email_consent="granted", email_unsubscribed=True
    )
    suppressed = make_contact(email="s@example.com", email_consent="granted", suppressed=True)
    unknown = make_contact(email="n@example.com", phone="+8613800138001", sms_consent="granted")
    segment_id = uuid.uuid4()
    with session_scope() as session:
        session.add(Segment(id=segment_id, name="vip", kind="static"))
        session.flush()
        session.execute(
            insert(SegmentMember),
            [{"segment_id": segment_id, "contact_id": c} for c in (ok, unknown)],
        )
    assert matching({"reachable": "email"}) == {ok}
    assert matching({"reachable": "sms"}) == {unknown}
    assert matching({"in_segment": str(segment_id)}) == {ok, unknown}
    assert matching({"not": {"in_segment": str(segment_id)}}) == {unsubscribed, suppressed}


def test_score_grade_probability_and_stage(backend: Backend) -> None:
    clock.freeze(T0)
    hot = make_contact(lifecycle_stage="mql")
    cooling = make_contact(lifecycle_stage="lead")
    unscored = make_contact()
    customer = make_contact(lifecycle_stage="customer")
    disqualified = make_contact(lifecycle_stage="disqualified")
    scores = [
        (hot, 100.0, T0, "A", 0.8),
        (cooling, 100.0, T0 - timedelta(days=30), "C", None),
        (customer, 10.0, T0, "F", 0.1),
    ]
    with session_scope() as session:
        session.execute(
            insert(ContactScore),
            [
                {
                    "contact_id": contact_id,
                    "behavior_score": points,
                    "behavior_as_of": as_of,
                    "grade": grade,
                    "probability": probability,
                }
                for contact_id, points, as_of, grade, probability in scores
            ],
        )
    everyone = {hot, cooling, unscored, customer, disqualified}
    cases: list[tuple[Any, set[uuid.UUID]]] = [
        # Decayed on read: 100 points 30 days ago are 50 at the default 30-day half-life.
        ({"field": "score", "op": "gte", "value": 60}, {hot}),
        ({"field": "score", "op": "gte", "value": 40}, {hot, cooling}),
        ({"field": "score", "op": "lt", "value": 20}, {customer, unscored, disqualified}),
        ({"field": "score", "op": "eq", "value": 0}, {unscored, disqualified}),
        ({"field": "score", "op": "neq", "value": 0}, {hot, cooling, customer}),
        ({"not": {"field": "score", "op": "gte", "value": 60}}, everyone - {hot}),
        ({"field": "grade", "op": "gte", "value": "B"}, {hot}),
        ({"field": "grade", "op": "lte", "value": "C"}, {cooling, customer}),
        ({"field": "grade", "op": "in", "value": ["A", "F"]}, {hot, customer}),
        ({"field": "grade", "op": "neq", "value": "A"}, everyone - {hot}),
        ({"field": "probability", "op": "gt", "value": 0.5}, {hot}),
        ({"field": "probability", "op": "lte", "value": 0.5}, {customer}),
        ({"field": "probability", "op": "exists", "value": False}, everyone - {hot, customer}),
        ({"field": "lifecycle_stage", "op": "gte", "value": "mql"}, {hot, customer}),
        ({"field": "lifecycle_stage", "op": "lt", "value": "mql"}, {cooling}),
        ({"field": "lifecycle_stage", "op": "eq", "value": "disqualified"}, {disqualified}),
        ({"field": "lifecycle_stage", "op": "exists", "value": False}, {unscored}),
        (
            {
                "and": [
                    {"field": "score", "op": "gte", "value": 40},
                    {"field": "grade", "op": "lte", "value": "B"},
                ]
            },
            {cooling},
        ),
    ]
    for tree, expected in cases:
        assert matching(tree) == expected, tree
        assert matching(tree, bulk=True) == expected, ("bulk", tree)

    with session_scope() as session:
        session.add(ScoringSettings(id=SETTINGS_ROW_ID, half_life_days=60.0))
    # At a 60-day half-life the cooling contact still holds 100 * 0.5 ** 0.5 = 70.7.
    assert matching({"field": "score", "op": "gte", "value": 70}) == {hot, cooling}
    assert matching({"field": "score", "op": "gte", "value": 71}) == {hot}
