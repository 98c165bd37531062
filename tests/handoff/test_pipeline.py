"""Through the real capture queue and ingest: a `became_mql` event emitted by scoring routes
the contact, and the handoff events become signed webhooks for an external CRM."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from core import feed
from core.clock import clock
from core.db import session_scope
from handoff import tasks
from handoff.models import Lead
from scoring import emit
from tests.channels.fakes import WebhookReceiver
from tests.conftest import drain
from tests.handoff.conftest import auth, key_for, make_contact, make_rep, make_rule


def dispatch() -> None:
    with session_scope() as session:
        feed.dispatch(session)


def test_became_mql_event_routes_and_outcomes_reach_the_crm_signed(
    channels_env: None,
    receiver: WebhookReceiver,
    client: TestClient,
    admin_key: str,
    now: datetime,
) -> None:
    tasks.subscribe()
    endpoint = client.post(
        "/api/v1/webhook-endpoints",
        json={"name": "CRM", "url": receiver.url, "events": ["lead_assigned", "deal_won"]},
        headers=auth(admin_key),
    ).json()
    receiver.secrets.append(endpoint["secret"])
    make_rule("pool", 10, "pool")
    rep = make_rep("Rep")
    contact = make_contact(email="buyer@factory.cn")
    with session_scope() as session:
        emit.track(session, [(contact, "became_mql", {}, "became_mql:test", clock.now())])
    assert drain() == 1
    dispatch()
    with session_scope() as session:
        [lead] = session.scalars(select(Lead)).all()
    assert (lead.contact_id, lead.rep_id, lead.trigger) == (contact, rep, "became_mql")
    headers = auth(key_for(rep))
    base = f"/api/v1/handoff/leads/{lead.id}"
    client.post(f"{base}/accept", headers=headers)
    won = client.post(
        f"{base}/won", json={"revenue_fen": 12_300_00, "close_date": "2026-03-20"}, headers=headers
    )
    assert won.status_code == 200, won.text
    drain()
    dispatch()
    dispatch()
    assert receiver.bad_signatures == 0
    bodies: list[dict[str, Any]] = receiver.received
    names = [body["data"]["event"]["name"] for body in bodies]
    assert sorted(names) == ["deal_won", "lead_assigned"]
    won_body = next(b for b in bodies if b["data"]["event"]["name"] == "deal_won")
    assert won_body["contact"]["email"] == "buyer@factory.cn"
    assert won_body["data"]["event"]["properties"]["revenue_fen"] == 12_300_00
    assert won_body["data"]["event"]["properties"]["lead_id"] == str(lead.id)
