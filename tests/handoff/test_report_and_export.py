"""Speed-to-lead per team and rep with SLA breaches, and the CSV export of leads."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

from fastapi.testclient import TestClient

from core.clock import clock
from core.db import session_scope
from handoff.service import enforce_sla
from tests.handoff.conftest import (
    auth,
    key_for,
    make_contact,
    make_rep,
    make_rule,
    make_team,
    route,
)


def test_speed_to_lead_per_team_and_rep(client: TestClient, admin_key: str, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    team = make_team("East")
    slow = make_rep("Slow", team_id=team, weight=2)
    fast = make_rep("Fast", team_id=team)
    routed = route(make_contact())
    assert routed.rep_id == slow
    clock.advance(timedelta(minutes=15))
    with session_scope() as session:
        enforce_sla(session)  # Slow missed it: Fast gets it
    clock.advance(timedelta(minutes=5))
    headers = auth(key_for(fast))
    client.post(f"/api/v1/handoff/leads/{routed.id}/accept", headers=headers)
    clock.advance(timedelta(minutes=10))
    client.post(
        f"/api/v1/handoff/leads/{routed.id}/attempts", json={"channel": "phone"}, headers=headers
    )
    answer = client.get("/api/v1/handoff/reports/speed-to-lead", headers=auth(admin_key))
    assert answer.status_code == 200, answer.text
    [row] = answer.json()
    assert (row["team"], row["rep"], row["leads"], row["sla_breaches"]) == ("East", "Fast", 1, 1)
    assert row["to_assignment"]["median_minutes"] == 0
    assert row["to_acceptance"]["median_minutes"] == 20
    assert row["to_first_contact"]["median_minutes"] == 30
    own = client.get("/api/v1/handoff/reports/speed-to-lead", headers=auth(key_for(slow)))
    assert own.json() == []  # Slow holds no leads any more
    bad = client.get(
        "/api/v1/handoff/reports/speed-to-lead",
        params={"since": "2026-03-02T00:00:00+00:00", "until": "2026-03-01T00:00:00+00:00"},
        headers=auth(admin_key),
    )
    assert bad.status_code == 422


def test_csv_export_is_scoped_and_spreadsheet_safe(
    client: TestClient, admin_key: str, now: datetime
) -> None:
    make_rule("territory", 10, "territory")
    alice = make_rep("Alice", territories=[{"kind": "city", "name": "Shenzhen"}])
    make_rep("Bob", territories=[{"kind": "city", "name": "Wuhan"}])
    mine = route(make_contact({"city": "Shenzhen"}, email="=cmd@evil.cn"))
    route(make_contact({"city": "Wuhan"}, email="b@example.cn"))
    answer = client.get("/api/v1/handoff/leads.csv", headers=auth(key_for(alice)))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [(r["lead_id"], r["email"], r["rep"], r["status"]) for r in rows] == [
        (str(mine.id), "'=cmd@evil.cn", "Alice", "assigned")
    ]
    everything = client.get("/api/v1/handoff/leads.csv", headers=auth(admin_key))
    assert len(list(csv.DictReader(io.StringIO(everything.text)))) == 2
