"""Campaign costs through the API and CSV import: validation, all-or-nothing, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from core.clock import clock
from core.keys import Role
from tests.conftest import make_key

GOOD_CSV = (
    "campaign,channel,date,amount,currency,name\n"
    'spring,paid_search,2026-03-01,"1,200.50",CNY,Spring search\n'
    "spring,paid_search,2026-03-02,99,,\n"
    "newsletter,email,2026-03-01,0.5,cny,\n"
)


@pytest.fixture
def finance(client: TestClient) -> dict[str, str]:
    clock.freeze(datetime(2026, 3, 20, 4, 0, tzinfo=UTC))
    return {"Authorization": f"Bearer {make_key(Role.finance)}"}


def upload(client: TestClient, headers: dict[str, str], text: str) -> object:
    return client.post(
        "/api/v1/attribution/costs/import",
        content=text.encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )


def stored(client: TestClient, headers: dict[str, str]) -> list[tuple[str, str, str, str]]:
    response = client.get(
        "/api/v1/attribution/costs",
        params={"start": "2026-01-01", "end": "2026-03-31"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return [(c["campaign"], c["channel"], c["date"], c["amount"]) for c in response.json()]


def test_a_csv_import_stores_costs_and_campaigns(
    client: TestClient, finance: dict[str, str]
) -> None:
    response = upload(client, finance, GOOD_CSV)
    assert response.status_code == 200, response.text
    assert response.json() == {"imported": 3}
    assert stored(client, finance) == [
        ("newsletter", "email", "2026-03-01", "0.50"),
        ("spring", "paid_search", "2026-03-01", "1200.50"),
        ("spring", "paid_search", "2026-03-02", "99.00"),
    ]
    campaigns = client.get("/api/v1/attribution/campaigns", headers=finance).json()
    assert campaigns == [
        {"key": "newsletter", "channel": "email", "name": "newsletter"},
        {"key": "spring", "channel": "paid_search", "name": "Spring search"},
    ]


def test_importing_again_replaces_instead_of_adding(
    client: TestClient, finance: dict[str, str]
) -> None:
    assert upload(client, finance, GOOD_CSV).status_code == 200
    assert upload(client, finance, GOOD_CSV).status_code == 200
    assert len(stored(client, finance)) == 3
    fixed = "campaign,channel,date,amount\nspring,paid_search,2026-03-02,101\n"
    assert upload(client, finance, fixed).status_code == 200
    assert ("spring", "paid_search", "2026-03-02", "101.00") in stored(client, finance)
    assert len(stored(client, finance)) == 3


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ("spring,paid_search,2026-03-03,-5", "line 3: amount", "negative"),
        ("spring,paid_search,2026-03-03,lots", "line 3: amount", "not a number"),
        ("spring,paid_search,2026-03-03,1.005", "line 3: amount", "more than 2 decimals"),
        ("spring,paid_search,2026-03-03,NaN", "line 3: amount", "not a number"),
        ("spring,paid_search,2026-03-03,5,USD", "line 3: currency", "unknown currency"),
        ("spring,paid_search,1999-12-31,5", "line 3: date", "out of range"),
        ("spring,paid_search,2027-01-01,5", "line 3: date", "out of range"),
        ("spring,paid_search,03/03/2026,5", "line 3: date", "not a date"),
        ("spring,billboards,2026-03-03,5", "line 3: channel", "not a channel"),
        (",paid_search,2026-03-03,5", "line 3: campaign", "required"),
        ("spring,paid_search,2026-03-01,5", "line 3: date", "same campaign, channel and date"),
    ],
)
def test_a_bad_line_rejects_the_whole_file(
    client: TestClient, finance: dict[str, str], line: str, field: str, message: str
) -> None:
    text = (
        "campaign,channel,date,amount,currency\nspring,paid_search,2026-03-01,10,\n" + line + "\n"
    )
    if line.count(",") == 3:
        text = text.replace(line, line + ",")
    response = upload(client, finance, text)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert message in error["fields"][field], error
    assert message in error["message"]
    assert stored(client, finance) == []


def test_malformed_csv_names_the_line(client: TestClient, finance: dict[str, str]) -> None:
    short = "campaign,channel,date,amount\nspring,paid_search,2026-03-01,1\nspring,email\n"
    response = upload(client, finance, short)
    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"line 3": "expected 4 fields, found 2"}

    quoted = 'campaign,channel,date,amount\nspring,paid_search,2026-03-01,1\n"spr"ing,email,x,1\n'
    response = upload(client, finance, quoted)
    assert response.status_code == 422
    assert "line 3" in response.json()["error"]["fields"]

    no_header = "spring,paid_search,2026-03-01,1\n"
    response = upload(client, finance, no_header)
    assert response.status_code == 422
    assert "lacks the columns" in response.json()["error"]["fields"]["line 1"]

    assert upload(client, finance, "campaign,channel,date,amount\n").status_code == 422
    assert upload(client, finance, "\xff").status_code == 422
    assert stored(client, finance) == []


def test_costs_through_json_are_validated_the_same_way(
    client: TestClient, finance: dict[str, str]
) -> None:
    good = {"campaign": "spring", "channel": "paid_search", "date": "2026-03-01", "amount": "12.30"}
    bad = {**good, "date": "2026-03-02", "amount": -1}
    response = client.post(
        "/api/v1/attribution/costs", json={"costs": [good, bad]}, headers=finance
    )
    assert response.status_code == 422
    assert "negative" in response.json()["error"]["fields"]["costs.1: amount"]
    assert stored(client, finance) == []
    response = client.post("/api/v1/attribution/costs", json={"costs": [good]}, headers=finance)
    assert response.json() == {"imported": 1}
    assert stored(client, finance) == [("spring", "paid_search", "2026-03-01", "12.30")]
    missing = client.post(
        "/api/v1/attribution/costs", json={"costs": [{"campaign": "x"}]}, headers=finance
    )
    assert missing.status_code == 422
    assert "costs.0.date" in missing.json()["error"]["fields"]


def test_only_finance_marketers_and_admins_see_costs(
    client: TestClient, finance: dict[str, str], admin_key: str
) -> None:
    params = {"start": "2026-03-01", "end": "2026-03-02"}
    for role, status in ((Role.rep, 403), (Role.manager, 403), (Role.marketer, 200)):
        headers = {"Authorization": f"Bearer {make_key(role)}"}
        assert (
            client.get("/api/v1/attribution/costs", params=params, headers=headers).status_code
            == status
        )
        assert upload(client, headers, GOOD_CSV).status_code == status
    admin = {"Authorization": f"Bearer {admin_key}"}
    assert client.get("/api/v1/attribution/costs", params=params, headers=admin).status_code == 200
    assert client.get("/api/v1/attribution/costs", params=params).status_code == 401
