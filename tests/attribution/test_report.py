"""The ROI report over the API: figures worked out by hand, reconciliation under every model,
CSV export, drill-down to touches and deals, and bad requests.

The story (T0 = 2026-03-01 10:00 in Shanghai):
- Ann: paid_search 'spring' on day 0, email 'newsletter' on day 5; lead on day 5, opportunity
  worth 1000 yuan on day 6 and won (1000 yuan) on day 8, deal d1.
- Bo: organic_social without a campaign on day 1; lead on day 1; won 500 yuan on day 9 (d2).
- Cy: no touch at all; won 300 yuan on day 9 (d3): unattributed.
- Di: paid_search 'spring' on day 2 and nothing else.
Costs: spring on paid_search 200 yuan (day 0) + 100 yuan (day 1), newsletter on email 50 yuan
(day 5), brand on display 80 yuan (day 3), and 999 yuan for spring on a day outside the range.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from attribution.credits import credit_conversions
from attribution.db_models import CreditRun
from attribution.models import Model
from attribution.service import record_conversion
from core.clock import clock
from core.db import session_scope
from core.keys import Role
from tests.attribution.helpers import contact, day, visit
from tests.conftest import make_key

RANGE = {"start": "2026-03-01", "end": "2026-03-11"}
COSTS = (
    "campaign,channel,date,amount\n"
    "spring,paid_search,2026-03-01,200\n"
    "spring,paid_search,2026-03-02,100\n"
    "newsletter,email,2026-03-06,50\n"
    "brand,display,2026-03-04,80\n"
    "spring,paid_search,2026-02-01,999\n"
)


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tasks run as they are enqueued (after commit), as a worker would run them."""
    from worker.app import celery_app

    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    monkeypatch.setitem(celery_app.conf, "task_eager_propagates", True)
    yield


@pytest.fixture
def finance(client: TestClient, worker: None) -> dict[str, str]:
    clock.freeze(datetime(2026, 4, 1, tzinfo=UTC))
    headers = {"Authorization": f"Bearer {make_key(Role.finance)}"}
    with session_scope() as session:
        ann, bo, cy, di = (contact(session) for _ in range(4))
        visit(session, ann, day(0), "paid_search", "spring")
        visit(session, ann, day(5), "email", "newsletter")
        record_conversion(session, ann, "lead", 0, day(5.01))
        record_conversion(session, ann, "opportunity", 1000_00, day(6), "d1")
        record_conversion(session, ann, "won", 1000_00, day(8), "d1")
        visit(session, bo, day(1), "organic_social")
        record_conversion(session, bo, "lead", 0, day(1.01))
        record_conversion(session, bo, "won", 500_00, day(9), "d2")
        record_conversion(session, cy, "won", 300_00, day(9), "d3")
        visit(session, di, day(2), "paid_search", "spring")
    response = client.post(
        "/api/v1/attribution/costs/import",
        content=COSTS.encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    return headers


def report(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/attribution/report", params={**RANGE, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in rows}


def test_linear_report_per_campaign(client: TestClient, finance: dict[str, str]) -> None:
    body = report(client, finance, model="linear")
    rows = by_key(body["campaigns"])
    assert list(rows) == [
        "newsletter",
        "spring",
        "brand",
        "(no campaign)",
        "(unattributed)",
        "(pending)",
    ]
    spring = rows["spring"]
    assert spring["name"] == "spring" and spring["channel"] == "paid_search"
    assert spring["cost"] == "300.00"
    assert (spring["leads"], spring["mqls"], spring["opportunities"], spring["customers"]) == (
        0.5,
        0,
        0.5,
        0.5,
    )
    assert spring["pipeline"] == "500.00" and spring["revenue"] == "500.00"
    assert spring["sourced_pipeline"] == "1000.00" and spring["influenced_pipeline"] == "1000.00"
    assert spring["roi"] == pytest.approx(0.6667) and spring["roas"] == pytest.approx(1.6667)
    assert spring["cost_per_lead"] == "600.00" and spring["cac"] == "600.00"
    assert spring["cost_per_mql"] is None
    newsletter = rows["newsletter"]
    assert newsletter["cost"] == "50.00" and newsletter["revenue"] == "500.00"
    assert (
        newsletter["sourced_pipeline"] == "0.00" and newsletter["influenced_pipeline"] == "1000.00"
    )
    assert newsletter["roi"] == 9.0
    assert rows["brand"]["cost"] == "80.00" and rows["brand"]["roi"] == -1.0
    assert rows["(no campaign)"]["revenue"] == "500.00" and rows["(no campaign)"]["leads"] == 1
    unattributed = rows["(unattributed)"]
    assert unattributed["revenue"] == "300.00" and unattributed["customers"] == 1
    assert body["totals"]["revenue"] == "1800.00" and body["totals"]["cost"] == "430.00"


def test_linear_report_per_channel(client: TestClient, finance: dict[str, str]) -> None:
    rows = by_key(report(client, finance, model="linear")["channels"])
    assert {key: (row["cost"], row["revenue"]) for key, row in rows.items()} == {
        "paid_search": ("300.00", "500.00"),
        "email": ("50.00", "500.00"),
        "organic_social": ("0.00", "500.00"),
        "display": ("80.00", "0.00"),
        "(unattributed)": ("0.00", "300.00"),
        "(pending)": ("0.00", "0.00"),
    }


def test_switching_models_moves_credit(client: TestClient, finance: dict[str, str]) -> None:
    first = by_key(report(client, finance, model="first_touch")["campaigns"])
    last = by_key(report(client, finance, model="last_touch")["campaigns"])
    assert (first["spring"]["revenue"], first["newsletter"]["revenue"]) == ("1000.00", "0.00")
    assert (last["spring"]["revenue"], last["newsletter"]["revenue"]) == ("0.00", "1000.00")


@pytest.mark.parametrize("model", list(Model))
def test_every_model_reconciles_to_won_revenue_and_costs(
    client: TestClient, finance: dict[str, str], model: Model
) -> None:
    body = report(client, finance, model=model.value)
    reconciliation = body["reconciliation"]
    assert reconciliation["won_revenue"] == "1800.00"
    assert reconciliation["imported_costs"] == "430.00"
    for group in ("campaigns", "channels"):
        check = reconciliation[group]
        assert check["revenue_reconciles"] and check["pipeline_reconciles"]
        assert check["costs_reconcile"] and check["reported_costs"] == "430.00"
        assert check["unattributed_revenue"] == "300.00"
        revenue = sum(int(row["revenue"].replace(".", "")) for row in body[group])
        assert revenue == 1800_00


def test_a_conversion_not_credited_yet_is_pending_and_still_reconciles(
    client: TestClient, finance: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.app import celery_app

    before = report(client, finance, model="markov")
    fit = before["freshness"]["channel"]["fit"]
    assert fit["version"] >= 1 and before["freshness"]["channel"]["pending_conversions"] == 0
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    with session_scope() as session:
        late = contact(session)
        visit(session, late, day(3), "referral")
        late_deal = record_conversion(session, late, "won", 200_00, day(10), "d4")
    # The task is queued, not run: the report computes nothing and shows the deal as pending.
    with session_scope() as session:
        computed = {run.id: run.computed_at for run in session.scalars(select(CreditRun))}
    for model in Model:
        body = report(client, finance, model=model.value)
        for group in ("campaigns", "channels"):
            check = body["reconciliation"][group]
            assert check["pending_revenue"] == "200.00"
            assert check["revenue_reconciles"] and check["pipeline_reconciles"]
            pending = by_key(body[group])["(pending)"]
            assert (pending["revenue"], pending["customers"]) == ("200.00", 1)
        assert body["reconciliation"]["won_revenue"] == "2000.00"
        assert body["freshness"]["channel"]["pending_conversions"] == 1
    with session_scope() as session:
        assert {run.id: run.computed_at for run in session.scalars(select(CreditRun))} == computed
    params = {**RANGE, "model": "linear", "by": "channel", "key": "(pending)"}
    drill = client.get("/api/v1/attribution/drilldown", params=params, headers=finance).json()
    assert [(d["conversion_id"], d["credited_to_row"]) for d in drill["conversions"]] == [
        (late_deal.id, "200.00")
    ]

    with session_scope() as session:
        credit_conversions(session, [late_deal.id])
    body = report(client, finance, model="markov")
    assert by_key(body["channels"])["referral"]["revenue"] == "200.00"
    assert by_key(body["channels"])["(pending)"]["revenue"] == "0.00"
    assert body["reconciliation"]["channels"]["revenue_reconciles"]
    # referral was new to the fit, so crediting the deal refitted the Markov run.
    assert body["freshness"]["channel"]["fit"]["version"] == fit["version"] + 1


def test_csv_export(client: TestClient, finance: dict[str, str]) -> None:
    response = client.get(
        "/api/v1/attribution/report.csv",
        params={**RANGE, "model": "linear", "by": "channel"},
        headers=finance,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "roi-channel-linear-2026-03-01-2026-03-11.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["key"] for row in rows] == [
        "email",
        "organic_social",
        "paid_search",
        "display",
        "(unattributed)",
        "(pending)",
        "(total)",
    ]
    assert rows[-1]["revenue"] == "1800.00" and rows[-1]["cost"] == "430.00"
    assert rows[2]["roi"] == "0.6667" and rows[3]["cac"] == ""


def test_drill_down_to_the_deals_and_touches_behind_a_figure(
    client: TestClient, finance: dict[str, str]
) -> None:
    params = {**RANGE, "model": "linear", "by": "campaign", "key": "spring", "kind": "won"}
    response = client.get("/api/v1/attribution/drilldown", params=params, headers=finance)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 1
    (deal,) = body["conversions"]
    assert (deal["ref"], deal["value"], deal["credited_to_row"]) == ("d1", "1000.00", "500.00")
    assert [(t["campaign"], t["credit"], t["in_row"]) for t in deal["touches"]] == [
        ("spring", "500.00", True),
        ("newsletter", "500.00", False),
    ]
    assert [(c["date"], c["amount"]) for c in body["costs"]] == [
        ("2026-03-01", "200.00"),
        ("2026-03-02", "100.00"),
    ]

    params.update(key="(unattributed)")
    body = client.get("/api/v1/attribution/drilldown", params=params, headers=finance).json()
    assert [(d["ref"], d["credited_to_row"], d["touches"]) for d in body["conversions"]] == [
        ("d3", "300.00", [])
    ]


def test_a_range_without_data_gives_an_empty_report(
    client: TestClient, finance: dict[str, str]
) -> None:
    body = report(client, finance, start="2025-01-01", end="2025-01-31", model="shapley")
    assert [row["key"] for row in body["campaigns"]] == ["(unattributed)", "(pending)"]
    assert body["totals"]["revenue"] == "0.00" and body["totals"]["cost"] == "0.00"
    assert body["reconciliation"]["channels"]["revenue_reconciles"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-03-10", "end": "2026-03-01"}, "end"),
        ({**RANGE, "model": "astrology"}, "model"),
        ({**RANGE, "lookback_days": 0}, "lookback_days"),
        ({"end": "2026-03-01"}, "start"),
        ({"start": "2026-03-01", "end": "2040-03-01"}, "end"),
    ],
)
def test_bad_report_requests_name_the_field(
    client: TestClient, finance: dict[str, str], params: dict[str, Any], field: str
) -> None:
    response = client.get("/api/v1/attribution/report", params=params, headers=finance)
    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]


def test_the_report_needs_a_finance_marketer_or_admin_key(
    client: TestClient, finance: dict[str, str]
) -> None:
    rep = {"Authorization": f"Bearer {make_key(Role.rep)}"}
    assert client.get("/api/v1/attribution/report", params=RANGE, headers=rep).status_code == 403
    assert client.get("/api/v1/attribution/report", params=RANGE).status_code == 401
    marketer = {"Authorization": f"Bearer {make_key(Role.marketer)}"}
    assert (
        client.get("/api/v1/attribution/report", params=RANGE, headers=marketer).status_code == 200
    )
