"""One contact's side of attribution, for the people who read it (the rep's dossier): the
touchpoints in the lookback window and how the latest credited conversion's credit was shared
among channels and campaigns; before anything is credited, the same model's shares over the
touches so far."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from attribution.credits import RunParameters
from attribution.db_models import Conversion, Credit, CreditRun
from attribution.models import ConversionPath, Model, touch_weights
from attribution.touchpoints import DEFAULT_LOOKBACK, Touchpoint, load_touchpoints
from core.clock import clock

TOUCHPOINTS = 50
# The model a contact's view shows: every touch of the path gets an equal share.
CREDIT_MODEL = Model.linear


def contact_attribution(
    session: Session, contact_id: uuid.UUID, touchpoints: int = TOUCHPOINTS
) -> dict[str, Any]:
    """The contact's touchpoints in attribution's lookback window, and each channel's and
    campaign's credit for the contact's latest credited conversion; before attribution has
    credited one, the same model's shares over the touchpoints so far."""
    now = clock.now()
    touches = load_touchpoints(session, now - DEFAULT_LOOKBACK, now, [contact_id]).get(
        contact_id, []
    )
    credited = _stored_credit(session, contact_id)
    return {
        "touchpoints": [
            {
                "at": t.at.isoformat(),
                "channel": t.channel,
                "campaign": t.campaign,
                "source": t.source,
            }
            for t in touches[-touchpoints:]
        ],
        "attribution": credited or _credit_from_touches(touches, now),
    }


def _stored_credit(session: Session, contact_id: uuid.UUID) -> dict[str, Any] | None:
    run_id = session.scalar(
        select(CreditRun.id).where(CreditRun.parameters == RunParameters(CREDIT_MODEL).key)
    )
    if run_id is None:
        return None
    conversion = session.execute(
        select(Conversion.id, Conversion.kind, Conversion.occurred_at, Conversion.value_fen)
        .where(
            Conversion.contact_id == contact_id,
            select(Credit.id)
            .where(Credit.run_id == run_id, Credit.conversion_id == Conversion.id)
            .exists(),
        )
        .order_by(Conversion.occurred_at.desc(), Conversion.id.desc())
        .limit(1)
    ).first()
    if conversion is None:
        return None
    rows = session.execute(
        select(
            Credit.channel,
            Credit.campaign,
            func.count(),
            func.sum(Credit.share),
            func.sum(Credit.credit_fen),
        )
        .where(Credit.run_id == run_id, Credit.conversion_id == conversion.id)
        .group_by(Credit.channel, Credit.campaign)
        .order_by(func.sum(Credit.share).desc(), Credit.channel)
    ).all()
    return {
        "model": CREDIT_MODEL.value,
        "from": "attribution",
        "conversion": {
            "kind": conversion.kind,
            "at": conversion.occurred_at.isoformat(),
            "value_fen": conversion.value_fen,
        },
        "credit": [
            {
                "channel": channel,
                "campaign": campaign,
                "touches": touches,
                "share": round(float(share), 4),
                "credit_fen": int(fen),
            }
            for channel, campaign, touches, share, fen in rows
        ],
    }


def _credit_from_touches(touches: list[Touchpoint], now: datetime) -> dict[str, Any]:
    shares: dict[tuple[str, str | None], list[float]] = {}
    if touches:
        weights = touch_weights([ConversionPath(tuple(touches), now, 0)], CREDIT_MODEL)
        total = float(weights.sum()) or 1.0
        for touch, weight in zip(touches, weights, strict=True):
            shares.setdefault((touch.channel, touch.campaign), []).append(weight / total)
    ranked = sorted(shares.items(), key=lambda item: (-sum(item[1]), item[0][0]))
    return {
        "model": CREDIT_MODEL.value,
        "from": "touchpoints",
        "conversion": None,
        "credit": [
            {
                "channel": channel,
                "campaign": campaign,
                "touches": len(parts),
                "share": round(sum(parts), 4),
                "credit_fen": 0,
            }
            for (channel, campaign), parts in ranked
        ],
    }
