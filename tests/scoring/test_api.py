"""The scoring API: rules CRUD with validation and rescoring, settings, score breakdown,
adjustments, lifecycle, model status and retraining; role checks and bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from capture.models import Contact, Event
from core.clock import clock
from core.db import session_scope
from core.keys import Role
from scoring.models import ScoreEntry, ScoringRule, ScoringRuleVersion
from tests.conftest import drain, make_key
from tests.scoring.conftest import T0, add_event, make_contact, page, process_feed
from worker.app import celery_app

BASE = "/api/v1/scoring"
GOOD_FIT = {
    "traits": {"title": "IT总监"},
    "email": "chen@huaxin-tech.cn",
    "company": {"industry": "软件和信息技术", "employees": 800, "province": "浙江"},
}


@pytest.fixture(autouse=True)
def eager_tasks(backend: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    monkeypatch.setitem(celery_app.conf, "task_eager_propagates", True)
    clock.freeze(T0)
    yield


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rule_count() -> tuple[int, int]:
    with session_scope() as session:
        return (
            int(session.scalar(select(func.count()).select_from(ScoringRule)) or 0),
            int(session.scalar(select(func.count()).select_from(ScoringRuleVersion)) or 0),
        )


def test_rules_crud_rescores_every_contact(client: TestClient, admin_key: str) -> None:
    marketer = auth(make_key(Role.marketer))
    rules = client.get(f"{BASE}/rules", headers=marketer)
    assert rules.status_code == 200
    assert {r["name"] for r in rules.json()} >= {"Form submitted", "Pricing page viewed"}

    contact = make_contact()
    page(contact, T0 - timedelta(hours=2), "/docs/api")
    page(contact, T0 - timedelta(hours=1), "/docs/sdk")
    process_feed()
    created = client.post(
        f"{BASE}/rules",
        headers=marketer,
        json={
            "kind": "behavior",
            "name": "Read the docs",
            "points": 4,
            "event_type": "page",
            "conditions": [{"field": "path", "op": "starts_with", "value": "/docs"}],
            "first_time_only": True,
        },
    )
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["version"] == 1 and rule["scored_version"] == 0
    stored = client.get(f"{BASE}/rules/{rule['id']}", headers=marketer).json()
    assert stored["scored_version"] == 1  # rescored once the rule was committed
    breakdown = client.get(f"{BASE}/contacts/{contact}/score", headers=marketer).json()
    assert breakdown["score"] == pytest.approx(6, rel=5e-3)  # 2 page views + 4 once

    changed = client.patch(f"{BASE}/rules/{rule['id']}", headers=marketer, json={"points": 10})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    breakdown = client.get(f"{BASE}/contacts/{contact}/score", headers=marketer).json()
    assert breakdown["score"] == pytest.approx(12, rel=5e-3)
    docs = next(t for t in breakdown["by_rule"] if t["rule_name"] == "Read the docs")
    assert (docs["lines"], docs["points"]) == (1, 10)
    line = next(x for x in breakdown["lines"] if x["rule_name"] == "Read the docs")
    assert (line["points"], line["points_when_recorded"], line["rule_version"]) == (10, 4, 1)
    assert sum(t["points_now"] for t in breakdown["by_rule"]) == pytest.approx(breakdown["score"])

    assert client.delete(f"{BASE}/rules/{rule['id']}", headers=marketer).status_code == 204
    assert client.get(f"{BASE}/rules/{rule['id']}", headers=marketer).status_code == 404
    breakdown = client.get(f"{BASE}/contacts/{contact}/score", headers=marketer).json()
    assert breakdown["score"] == pytest.approx(2, rel=5e-3)
    versions = client.get(f"{BASE}/rules/{rule['id']}/versions", headers=marketer).json()
    assert [(v["version"], v["action"]) for v in versions] == [
        (1, "created"),
        (2, "updated"),
        (3, "deleted"),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "behavior", "name": "x", "points": 5, "event_type": "track",
          "event_name": "no_such_event"}, "event_name"),
        ({"kind": "fit", "name": "x", "points": 5, "trait": "shoe_size",
          "conditions": [{"op": "equals", "value": "42"}]}, "trait"),
        ({"kind": "fit", "name": "x", "points": 5, "trait": "traits.shoe_size",
          "conditions": [{"op": "equals", "value": "42"}]}, "trait"),
        ({"kind": "behavior", "name": "x", "points": "ten", "event_type": "page"}, "points"),
        ({"kind": "behavior", "name": "x", "points": "10", "event_type": "page"}, "points"),
        ({"kind": "behavior", "name": "x", "points": 1, "event_type": "page",
          "conditions": [{"field": "path", "op": "matches", "value": "/"}]}, "conditions.0.op"),
        ({"kind": "behavior", "name": "x", "points": 1, "event_type": "page",
          "conditions": [{"field": "cookie", "op": "equals", "value": "/"}]},
         "conditions.0.field"),
        ({"kind": "fit", "name": "x", "points": 1, "trait": "company_size",
          "conditions": [{"op": "gte", "value": "big"}]}, "conditions.0.value"),
        ({"kind": "behavior", "name": "x", "points": 1, "event_type": "page",
          "daily_limit": 0}, "daily_limit"),
        ({"kind": "behavior", "name": "", "points": 1, "event_type": "page"}, "name"),
        ({"kind": "vibes", "name": "x", "points": 1}, "kind"),
    ],
)  # fmt: skip
def test_a_bad_rule_is_refused_and_changes_nothing(
    client: TestClient, admin_key: str, body: dict, field: str
) -> None:
    client.get(f"{BASE}/rules", headers=auth(admin_key))
    before = rule_count()
    response = client.post(f"{BASE}/rules", headers=auth(admin_key), json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field in error["fields"], error
    assert rule_count() == before


def test_bad_settings_and_updates_are_refused(client: TestClient, admin_key: str) -> None:
    headers = auth(admin_key)
    before = client.get(f"{BASE}/settings", headers=headers).json()
    for body, field in (
        ({"half_life_days": 0}, "half_life_days"),
        ({"half_life_days": -3}, "half_life_days"),
        ({"half_life_days": "soon"}, "half_life_days"),
        ({"mql_min_grade": "Z"}, "mql_min_grade"),
        ({"grade_thresholds": {"A": 1, "B": 2, "C": 3, "D": 4, "E": 5}}, "grade_thresholds"),
        ({"label_days": 0}, "label_days"),
    ):
        response = client.patch(f"{BASE}/settings", headers=headers, json=body)
        assert response.status_code == 422, body
        assert field in response.json()["error"]["fields"]
    assert client.get(f"{BASE}/settings", headers=headers).json() == before
    rule = client.get(f"{BASE}/rules", headers=headers).json()[0]
    response = client.patch(f"{BASE}/rules/{rule['id']}", headers=headers, json={"points": None})
    assert response.status_code == 422
    assert client.get(f"{BASE}/rules/{rule['id']}", headers=headers).json() == rule
    missing = client.patch(f"{BASE}/rules/{uuid.uuid4()}", headers=headers, json={"points": 3})
    assert missing.status_code == 404


def test_a_new_half_life_rescores_everyone(client: TestClient, admin_key: str) -> None:
    contact = make_contact()
    add_event(contact, T0, "form_submitted")
    process_feed()
    clock.advance(timedelta(days=10))
    response = client.patch(
        f"{BASE}/settings", headers=auth(admin_key), json={"half_life_days": 10}
    )
    assert response.status_code == 200
    score = client.get(f"{BASE}/contacts/{contact}/score", headers=auth(admin_key)).json()
    assert score["score"] == pytest.approx(25)
    assert score["half_life_days"] == 10


def test_breakdown_adjustment_and_lifecycle_explain_a_contact(
    client: TestClient, admin_key: str
) -> None:
    rep = auth(make_key(Role.rep))
    marketer = auth(make_key(Role.marketer))
    contact = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    add_event(contact, T0 - timedelta(days=30), "whitepaper_downloaded")
    page(contact, T0 - timedelta(days=1), "/pricing")
    process_feed()

    score = client.get(f"{BASE}/contacts/{contact}/score", headers=rep).json()
    assert score["grade"] == "A" and score["fit_points"] == 65
    assert {f["rule_name"] for f in score["fit"]} == {
        "Senior decision maker",
        "Target industry",
        "Mid-size or large company",
        "Tier-one region",
        "Company email",
    }
    assert sorted(line["cause"] for line in score["lines"]) == ["decay", "rule", "rule", "rule"]
    assert score["lines_total"] == 4
    assert sum(line["points"] for line in score["lines"]) == pytest.approx(score["stored_score"])
    assert score["stored_score"] + score["decay_since_stored"] == pytest.approx(score["score"])
    whitepaper = next(
        line for line in score["lines"] if line["rule_name"] == "Whitepaper downloaded"
    )
    assert whitepaper["points"] == 15 and whitepaper["points_now"] == pytest.approx(7.5)
    assert score["score"] == pytest.approx(sum(line["points_now"] for line in score["lines"]))
    assert score["prediction"] == {
        "using": "rule_score",
        "probability": None,
        "model_version": None,
        "factors": [],
        "predicted_at": None,
    }

    adjusted = client.post(
        f"{BASE}/contacts/{contact}/adjustments",
        headers=marketer,
        json={"points": 45, "note": "met at the Shanghai expo"},
    )
    assert adjusted.status_code == 201
    assert (
        client.post(
            f"{BASE}/contacts/{contact}/adjustments", headers=rep, json={"points": 5, "note": "hi!"}
        ).status_code
        == 403
    )
    not_a_number = client.post(
        f"{BASE}/contacts/{contact}/adjustments",
        headers={**marketer, "Content-Type": "application/json"},
        content='{"points": NaN, "note": "not a number"}',
    )
    assert not_a_number.status_code == 422
    assert "points" in not_a_number.json()["error"]["fields"]

    history = client.get(f"{BASE}/contacts/{contact}/lifecycle", headers=rep).json()
    assert [(h["from_stage"], h["to_stage"], h["cause"]) for h in history] == [
        (None, "lead", "event"),
        ("lead", "mql", "score"),
    ]
    back = client.post(
        f"{BASE}/contacts/{contact}/lifecycle",
        headers=marketer,
        json={"stage": "disqualified", "reason": "a competitor doing research"},
    )
    assert back.status_code == 201 and back.json()["cause"] == "manual"
    for body in ({"stage": "vip", "reason": "why not"}, {"stage": "lead"}):
        response = client.post(f"{BASE}/contacts/{contact}/lifecycle", headers=marketer, json=body)
        assert response.status_code == 422
    assert client.get(f"{BASE}/contacts/{uuid.uuid4()}/score", headers=rep).status_code == 404
    with session_scope() as session:
        manual = session.scalar(select(ScoreEntry).where(ScoreEntry.cause == "manual"))
        assert manual is not None and manual.note == "met at the Shanghai expo"


def test_roles_are_checked_on_every_endpoint(client: TestClient, admin_key: str) -> None:
    rep = auth(make_key(Role.rep))
    finance = auth(make_key(Role.finance))
    contact = make_contact()
    assert client.get(f"{BASE}/rules").status_code == 401
    assert client.get(f"{BASE}/rules", headers=rep).status_code == 403
    assert client.post(f"{BASE}/model/retrain", headers=rep).status_code == 403
    assert (
        client.patch(f"{BASE}/settings", headers=rep, json={"mql_threshold": 1}).status_code == 403
    )
    assert client.get(f"{BASE}/contacts/{contact}/score", headers=finance).status_code == 403
    assert client.get(f"{BASE}/model", headers=finance).status_code == 403
    assert client.get(f"{BASE}/contacts/{contact}/score", headers=rep).status_code == 200


def test_model_status_says_when_the_rule_score_is_used(client: TestClient, admin_key: str) -> None:
    clock.freeze(datetime(2026, 6, 1, tzinfo=UTC))
    status = client.get(f"{BASE}/model", headers=auth(admin_key)).json()
    assert status["using"] == "rule_score" and status["active"] is None
    assert "cold start: 0 contacts" in status["reason"]
    refused = client.post(f"{BASE}/model/retrain", headers=auth(admin_key))
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "no_training_data"
    assert client.get(f"{BASE}/model/versions", headers=auth(admin_key)).json() == []


def test_events_from_the_tracking_api_are_scored_through_the_change_feed(
    client: TestClient, admin_key: str, write_key: str
) -> None:
    at = (T0 - timedelta(minutes=5)).isoformat()
    batch = [
        {"type": "page", "anonymousId": "a-1", "timestamp": at,
         "properties": {"url": "https://www.example.com/pricing", "path": "/pricing"}},
        {"type": "identify", "anonymousId": "a-1", "userId": "u-1", "timestamp": at,
         "traits": {"email": "wang@yunqi.com.cn", "title": "CTO"}},
        {"type": "group", "userId": "u-1", "groupId": "g-1", "timestamp": at,
         "traits": {"industry": "制造业", "employees": 300, "province": "上海"}},
        {"type": "track", "userId": "u-1", "event": "form_submitted", "timestamp": at,
         "properties": {"form": "demo_request"}},
    ]  # fmt: skip
    assert client.post("/v1/batch", json={"batch": batch}, auth=(write_key, "")).status_code == 200
    drain()
    process_feed()
    with session_scope() as session:
        contact = session.scalar(select(Contact.id).where(Contact.user_id == "u-1"))
    score = client.get(f"{BASE}/contacts/{contact}/score", headers=auth(admin_key)).json()
    assert score["score"] == pytest.approx(61, rel=1e-3)  # form 50 + pricing 10 + page 1
    assert (score["grade"], score["fit_points"], score["lifecycle_stage"]) == ("A", 65, "mql")
    history = client.get(f"{BASE}/contacts/{contact}/lifecycle", headers=auth(admin_key)).json()
    assert [(h["to_stage"], h["cause"]) for h in history] == [
        ("subscriber", "capture"),
        ("lead", "event"),
        ("mql", "score"),
    ]
    drain()
    with session_scope() as session:
        became = session.scalars(select(Event.contact_id).where(Event.name == "became_mql"))
        assert list(became) == [contact]
