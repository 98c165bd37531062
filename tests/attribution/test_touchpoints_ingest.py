"""SMS touches through the real capture path: tracking API → queue → ingest worker → the
touchpoints attribution reads, and the credits they earn."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from attribution.credits import RunParameters, update_run
from attribution.db_models import Credit
from attribution.models import Model
from attribution.service import record_conversion
from attribution.touchpoints import load_touchpoints
from capture.models import Identity
from core.clock import clock
from core.db import session_scope
from tests.conftest import drain

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
SITE = "https://www.example.com"
SMS_LANDING = SITE + "/?utm_source=aliyun_sms&utm_medium=sms&utm_campaign=flash-sale"


def message(anon: str, at: datetime, **body: Any) -> dict[str, Any]:
    return {
        "anonymousId": anon,
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        **body,
    }


def page(anon: str, url: str, at: datetime) -> dict[str, Any]:
    return message(anon, at, type="page", properties={"url": url, "referrer": ""})


def click(anon: str, at: datetime, **properties: Any) -> dict[str, Any]:
    return message(anon, at, type="track", event="sms_clicked", properties=properties)


def test_sms_clicks_and_sms_landings_are_touches(client: TestClient, write_key: str) -> None:
    clock.freeze(T0 + timedelta(days=3))
    anon = "sms-reader"
    batch = [
        page(anon, SITE + "/?utm_source=baidu&utm_medium=cpc&utm_campaign=spring", T0),
        # The click on our SMS, and the session it opened a minute later: one touch.
        click(anon, T0 + timedelta(hours=2), campaign="flash-sale", journey_id="j-7"),
        page(anon, SMS_LANDING, T0 + timedelta(hours=2, minutes=1)),
        # A link scanner's click is no touch.
        click(anon, T0 + timedelta(hours=5), campaign="flash-sale", machine=True),
        # A later landing from the same SMS without a recorded click still is one.
        page(anon, SMS_LANDING, T0 + timedelta(days=1)),
    ]
    response = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    assert response.status_code == 200, response.text
    assert drain() == len(batch)

    with session_scope() as session:
        contact_id = session.scalar(
            select(Identity.contact_id).where(Identity.kind == "anonymous", Identity.value == anon)
        )
        assert contact_id is not None
        touches = load_touchpoints(session, T0 - timedelta(days=1), T0 + timedelta(days=2))
        assert [(t.source, t.channel, t.campaign) for t in touches[contact_id]] == [
            ("visit", "paid_search", "spring"),
            ("sms_click", "sms", "flash-sale"),
            ("visit", "sms", "flash-sale"),
        ]
        won = record_conversion(session, contact_id, "won", 300_00, T0 + timedelta(days=2), "d")
        run = update_run(session, RunParameters(Model.linear))
        credited = session.execute(
            select(Credit.channel, Credit.touch_source, Credit.credit_fen)
            .where(Credit.run_id == run.id, Credit.conversion_id == won.id)
            .order_by(Credit.position)
        ).all()
    assert [tuple(row) for row in credited] == [
        ("paid_search", "visit", 100_00),
        ("sms", "sms_click", 100_00),
        ("sms", "visit", 100_00),
    ]
