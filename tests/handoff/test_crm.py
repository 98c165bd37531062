"""Outcomes from an external CRM, keyed by its deal id, applied once however often sent."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient
from sqlalchemy import select

from attribution.db_models import Conversion
from capture.models import Contact
from core.db import session_scope
from tests.handoff.conftest import auth, make_contact, make_rep, make_rule, route


def test_crm_outcomes_by_deal_id(client: TestClient, admin_key: str, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    make_rep("Rep")
    contact = make_contact()
    routed = route(contact)
    url, headers = "/api/v1/handoff/crm/outcomes", auth(admin_key)
    unknown = client.post(
        url,
        json={
            "external_deal_id": "SF-1",
            "outcome": "opportunity",
            "amount_fen": 100,
            "close_date": "2026-05-01",
        },
        headers=headers,
    )
    assert unknown.status_code == 422 and "lead_id" in unknown.json()["error"]["fields"]
    opportunity = {
        "external_deal_id": "SF-1",
        "lead_id": str(routed.id),
        "outcome": "opportunity",
        "amount_fen": 900_000,
        "close_date": "2026-05-01",
    }
    assert client.post(url, json=opportunity, headers=headers).json()["status"] == "opportunity"
    won = {
        "external_deal_id": "SF-1",
        "outcome": "won",
        "amount_fen": 800_000,
        "close_date": "2026-04-28",
    }
    for _ in range(2):  # redelivered by the CRM
        answer = client.post(url, json=won, headers=headers)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["external_deal_id"]) == ("won", "SF-1")
    missing_reason = client.post(
        url, json={"external_deal_id": "SF-1", "outcome": "lost"}, headers=headers
    )
    assert missing_reason.status_code == 422
    with session_scope() as session:
        stage = session.scalar(select(Contact.lifecycle_stage).where(Contact.id == contact))
        conversions = session.scalars(select(Conversion.kind).order_by(Conversion.kind)).all()
    assert (stage, conversions) == ("customer", ["mql", "opportunity", "won"])
