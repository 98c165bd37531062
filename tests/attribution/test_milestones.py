"""Leads and MQLs as conversions: scoring's lifecycle transitions reach the ROI report, credited
to the campaigns that brought the contact, and counted once."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from attribution.db_models import Conversion
from capture.merge import merge_contacts
from core.clock import clock
from core.db import session_scope
from core.keys import Role
from scoring import scorer
from tests.attribution.helpers import day, visit
from tests.attribution.test_report import by_key, worker  # noqa: F401 (fixture)
from tests.conftest import make_key
from tests.scoring.conftest import add_event, make_contact, page, process_feed

RANGE = {"start": "2026-03-01", "end": "2026-03-11", "model": "linear"}
GOOD_FIT = {
    "traits": {"title": "CTO"},
    "email": "li.wei@yunqi.com.cn",
    "company": {"industry": "制造业", "employees": 500, "province": "上海"},
}


def campaigns(client: TestClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = client.get("/api/v1/attribution/report", params=RANGE, headers=headers)
    assert response.status_code == 200, response.text
    return by_key(response.json()["campaigns"])


def test_leads_and_mqls_from_scoring_are_counted_per_campaign(
    client: TestClient,
    worker: None,  # noqa: F811
) -> None:
    scorer.subscribe()
    clock.freeze(day(1))
    hot = make_contact(**GOOD_FIT)  # type: ignore[arg-type]
    lukewarm = make_contact(email="a@163.com", traits={"title": "实习生"})
    walk_in = make_contact(email="zhao@corp.cn")  # no touch at all
    with session_scope() as session:
        scorer.scoring_settings(session)
        visit(session, hot, day(0), "paid_search", "spring")
        visit(session, hot, day(0.5), "email", "newsletter")
        visit(session, lukewarm, day(0.2), "paid_search", "spring")
    for contact in (hot, lukewarm, walk_in):
        page(contact, day(0.6), "/pricing")
        add_event(contact, day(0.7), "form_submitted")
    process_feed()

    finance = {"Authorization": f"Bearer {make_key(Role.finance)}"}
    rows = campaigns(client, finance)
    spring, newsletter = rows["spring"], rows["newsletter"]
    # Two leads: the hot one split over its two campaigns, the lukewarm one all spring's.
    assert (spring["leads"], newsletter["leads"]) == (1.5, 0.5)
    # One MQL (the intern's fit grade keeps it a lead), split the same way.
    assert (spring["mqls"], newsletter["mqls"]) == (0.5, 0.5)
    assert rows["(unattributed)"]["leads"] == 1  # the walk-in, drilled down below
    behind = client.get(
        "/api/v1/attribution/drilldown",
        params={**RANGE, "by": "campaign", "key": "(unattributed)", "kind": "lead"},
        headers=finance,
    )
    assert behind.status_code == 200, behind.text
    assert [deal["contact_id"] for deal in behind.json()["conversions"]] == [str(walk_in)]

    clock.freeze(day(2))
    add_event(hot, day(1.5), "form_submitted")
    process_feed()
    with session_scope() as session:
        scorer.rescore_all(session)
    again = campaigns(client, finance)
    assert (again["spring"]["leads"], again["spring"]["mqls"]) == (1.5, 0.5)


def test_a_merge_keeps_each_milestone_once_at_its_earliest(backend: object) -> None:
    scorer.subscribe()
    clock.freeze(day(3))
    phone_signup = make_contact(email="wang@corp.cn")
    laptop_signup = make_contact(email="wang.wei@corp.cn")
    add_event(laptop_signup, day(2), "form_submitted")
    add_event(phone_signup, day(1), "whitepaper_downloaded")
    process_feed()
    with session_scope() as session:
        merge_contacts(session, laptop_signup, phone_signup)
    process_feed()
    with session_scope() as session:
        rows = session.execute(
            select(Conversion.contact_id, Conversion.kind, Conversion.occurred_at)
        ).all()
    assert rows == [(laptop_signup, "lead", day(1))]
