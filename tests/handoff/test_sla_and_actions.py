"""The SLA with the clock moved, and what reps do: accept, reject (wrong territory reroutes),
attempts, opportunity, won and lost, each an event, a stage and, for deals, a conversion."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from attribution.db_models import Conversion
from capture.models import Contact
from core.clock import clock
from core.db import session_scope
from handoff import service, tasks
from handoff.models import Assignment, LeadActivity
from scoring.models import LifecycleTransition
from tests.conftest import Backend
from tests.handoff.conftest import (
    auth,
    key_for,
    lead,
    make_contact,
    make_rep,
    make_rule,
    make_team,
    route,
)


def sweep() -> int:
    with session_scope() as session:
        return service.enforce_sla(session)


def activities(lead_id: uuid.UUID) -> list[str]:
    with session_scope() as session:
        query = select(LeadActivity.kind).where(LeadActivity.lead_id == lead_id)
        return list(session.scalars(query.order_by(LeadActivity.id)))


def test_unaccepted_lead_moves_to_the_next_rep_after_15_working_minutes(
    backend: Backend, now: datetime
) -> None:
    make_rule("pool", 10, "pool")
    team = make_team("East")
    first = make_rep("First", team_id=team)
    second = make_rep("Second", team_id=team)
    routed = route(make_contact())
    assert routed.accept_by == now + timedelta(minutes=15)
    clock.advance(timedelta(minutes=14, seconds=59))
    assert sweep() == 0
    clock.advance(timedelta(seconds=1))
    assert sweep() == 1
    moved = lead(routed.id)
    assert moved.rep_id == ({first, second} - {routed.rep_id}).pop()
    assert (moved.status, moved.sla_breaches) == ("assigned", 1)
    assert moved.accept_by == clock.now() + timedelta(minutes=15)
    assert activities(routed.id) == ["sla_missed", "manager_alerted"]
    with session_scope() as session:
        history = session.execute(
            select(Assignment.rep_id, Assignment.outcome).order_by(Assignment.seq)
        ).all()
    assert history == [(routed.rep_id, "sla_missed"), (moved.rep_id, None)]
    clock.advance(timedelta(minutes=15))
    assert sweep() == 1
    assert lead(routed.id).status == "waiting"  # both reps had it: it waits for a new one


def test_sla_counts_working_time_in_the_reps_zone(backend: Backend, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    make_rep("Late shift", work_start="09:00", work_end="10:10")
    routed = route(make_contact())
    # 10 minutes left today (Monday), 5 more from Tuesday 09:00 Shanghai (01:00 UTC).
    assert routed.accept_by == datetime.fromisoformat("2026-03-03T01:05:00+00:00")
    clock.advance(timedelta(hours=2))
    assert sweep() == 0


def test_accept_attempt_opportunity_and_won(client: TestClient, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    rep = make_rep("Rep")
    contact = make_contact()
    routed = route(contact)
    headers = auth(key_for(rep))
    base = f"/api/v1/handoff/leads/{routed.id}"
    premature = client.post(
        f"{base}/won", json={"revenue_fen": 1, "close_date": "2026-04-01"}, headers=headers
    )
    assert premature.status_code == 409
    assert client.post(f"{base}/accept", headers=headers).json()["status"] == "accepted"
    clock.advance(timedelta(minutes=3))
    attempt = client.post(f"{base}/attempts", json={"channel": "phone"}, headers=headers).json()
    assert attempt["attempts"] == 1 and attempt["first_contact_at"] is not None
    bad = client.post(f"{base}/opportunity", json={"amount_fen": -5}, headers=headers)
    assert bad.status_code == 422
    assert set(bad.json()["error"]["fields"]) == {"amount_fen", "close_date"}
    opportunity = client.post(
        f"{base}/opportunity",
        json={"amount_fen": 5_000_000, "close_date": "2026-04-30"},
        headers=headers,
    )
    assert opportunity.json()["status"] == "opportunity"
    won = client.post(
        f"{base}/won", json={"revenue_fen": 4_800_000, "close_date": "2026-04-20"}, headers=headers
    )
    assert won.status_code == 200, won.text
    assert (won.json()["status"], won.json()["revenue_fen"]) == ("won", 4_800_000)
    with session_scope() as session:
        stage = session.scalar(select(Contact.lifecycle_stage).where(Contact.id == contact))
        moves = session.scalars(
            select(LifecycleTransition.to_stage)
            .where(LifecycleTransition.contact_id == contact)
            .order_by(LifecycleTransition.id)
        ).all()
        conversions = session.execute(
            select(Conversion.kind, Conversion.value_fen, Conversion.external_ref).order_by(
                Conversion.kind
            )
        ).all()
    assert stage == "customer"
    assert moves[-3:] == ["sql", "opportunity", "customer"]
    ref = f"lead:{routed.id}"
    assert sorted(conversions) == [
        ("mql", 0, ""),  # the contact became an MQL on its way to sales
        ("opportunity", 5_000_000, ref),
        ("won", 4_800_000, ref),
    ]
    assert activities(routed.id) == ["accepted", "attempt", "opportunity", "won"]


def test_wrong_territory_reroutes_other_reasons_close(client: TestClient, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    first = make_rep("First")
    second = make_rep("Second", weight=2)
    routed = route(make_contact())
    holder = routed.rep_id
    assert holder is not None and holder in {first, second}
    rerouted = client.post(
        f"/api/v1/handoff/leads/{routed.id}/reject",
        json={"reason": "wrong_territory"},
        headers=auth(key_for(holder)),
    )
    assert rerouted.status_code == 200, rerouted.text
    other = ({first, second} - {holder}).pop()
    assert (rerouted.json()["status"], rerouted.json()["rep_id"]) == ("assigned", str(other))
    unknown = client.post(
        f"/api/v1/handoff/leads/{routed.id}/reject",
        json={"reason": "bored"},
        headers=auth(key_for(other)),
    )
    assert unknown.status_code == 422 and "reason" in unknown.json()["error"]["fields"]
    spam = client.post(
        f"/api/v1/handoff/leads/{routed.id}/reject",
        json={"reason": "spam", "note": "bot"},
        headers=auth(key_for(other)),
    )
    assert (spam.json()["status"], spam.json()["outcome_reason"]) == ("rejected", "spam")


def test_lost_deal_records_its_reason(client: TestClient, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    rep = make_rep("Rep")
    routed = route(make_contact())
    headers = auth(key_for(rep))
    base = f"/api/v1/handoff/leads/{routed.id}"
    client.post(f"{base}/accept", headers=headers)
    lost = client.post(f"{base}/lost", json={"reason": "chose a competitor"}, headers=headers)
    assert (lost.json()["status"], lost.json()["outcome_reason"]) == ("lost", "chose a competitor")
    assert client.post(f"{base}/accept", headers=headers).status_code == 409


def test_admin_assigns_a_queued_lead_by_hand(
    client: TestClient, admin_key: str, now: datetime
) -> None:
    make_rule("nobody", 10, "fallback")
    rep = make_rep("Rep")
    routed = route(make_contact())
    assert routed.status == "queued"
    url = f"/api/v1/handoff/leads/{routed.id}/assign"
    assert (
        client.post(url, json={"rep_id": str(rep)}, headers=auth(key_for(rep))).status_code == 403
    )
    missing = client.post(url, json={"rep_id": str(uuid.uuid4())}, headers=auth(admin_key))
    assert missing.status_code == 422 and "rep_id" in missing.json()["error"]["fields"]
    given = client.post(url, json={"rep_id": str(rep)}, headers=auth(admin_key))
    assert given.status_code == 200, given.text
    assert (given.json()["status"], given.json()["rep_id"]) == ("assigned", str(rep))
    detail = client.get(f"/api/v1/handoff/leads/{routed.id}", headers=auth(key_for(rep))).json()
    assert [d["rule_kind"] for d in detail["decisions"]] == ["fallback", "manual"]


def test_the_beat_task_moves_late_leads_and_routes_waiting_ones(
    backend: Backend, now: datetime
) -> None:
    make_rule("pool", 10, "pool")
    first = make_rep("First")
    late = route(make_contact())
    make_rep("Night owl", work_start="20:00", work_end="23:00")
    also_late = route(make_contact())  # the night owl is outside their hours
    assert (late.rep_id, also_late.rep_id) == (first, first)
    clock.advance(timedelta(minutes=15))
    assert tasks.enforce_sla() == 2  # both moved on; nobody else in hours, so they wait
    assert {lead(late.id).status, lead(also_late.id).status} == {"waiting"}
    clock.advance(timedelta(hours=10))  # 20:15 in Shanghai: the night owl starts
    assert tasks.enforce_sla() == 2  # both routed from waiting
    assert lead(late.id).status == lead(also_late.id).status == "assigned"
