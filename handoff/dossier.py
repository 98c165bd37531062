"""The dossier: everything a rep needs before calling, led by a one-line summary — who, why
now, what they did, how they came, the journeys they are in, and who had them before."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from attribution.credits import RunParameters
from attribution.db_models import Conversion, Credit, CreditRun
from attribution.models import ConversionPath, Model, touch_weights
from attribution.touchpoints import DEFAULT_LOOKBACK, Touchpoint, load_touchpoints
from capture.models import Company, Contact, Event, Visit
from core.clock import clock
from handoff.models import Assignment, Lead, Rep
from journeys.models import Enrollment, Journey
from scoring import service as scoring

KEY_EVENTS = (
    "form_submitted",
    "whitepaper_downloaded",
    "demo_requested",
    "email_opened",
    "email_clicked",
    "sms_clicked",
    "became_mql",
    "sales_accepted",
    "opportunity_created",
    "deal_won",
    "deal_lost",
)
TOP_PAGES = 10
TIMELINE_LENGTH = 30
TOUCHPOINTS = 50
RECENT = timedelta(days=7)
# The attribution model the dossier shows: every touch of the path gets an equal share.
CREDIT_MODEL = Model.linear


def _name(contact: Contact) -> str:
    traits = contact.traits or {}
    full = traits.get("name") or " ".join(
        str(traits[k]) for k in ("last_name", "first_name") if traits.get(k)
    )
    return str(full or contact.email or "Unknown contact")


def top_pages(session: Session, contact_id: uuid.UUID, since: Any = None) -> list[dict[str, Any]]:
    query = (
        select(Event.path, func.count())
        .where(Event.contact_id == contact_id, Event.type == "page", Event.path.is_not(None))
        .group_by(Event.path)
        .order_by(func.count().desc(), Event.path)
        .limit(TOP_PAGES)
    )
    if since is not None:
        query = query.where(Event.timestamp >= since)
    return [{"path": path, "views": views} for path, views in session.execute(query).all()]


def summary_line(session: Session, contact: Contact) -> str:
    """E.g. "Viewed /pricing 3× this week after a baidu ad; whitepaper_downloaded; VP of
    Operations at a 300-person firm in Chongqing"."""
    parts: list[str] = []
    recent = top_pages(session, contact.id, clock.now() - RECENT)
    if recent:
        page = recent[0]
        seen = f"Viewed {page['path']} {page['views']}× this week"
        if contact.last_touch_source:
            seen += f" after a {contact.last_touch_source} {contact.last_touch_medium or 'visit'}"
        parts.append(seen)
    done = session.scalars(
        select(Event.name)
        .where(Event.contact_id == contact.id, Event.name.in_(KEY_EVENTS[:3]))
        .distinct()
    ).all()
    parts.extend(str(name).replace("_", " ") for name in done)
    traits = contact.traits or {}
    company = session.get(Company, contact.company_id) if contact.company_id else None
    company_traits = company.traits or {} if company else {}
    who = str(traits.get("title") or _name(contact))
    size = company_traits.get("size") or company_traits.get("employees")
    place = traits.get("city") or company_traits.get("city") or company_traits.get("region")
    if company is not None:
        who += f" at {company.name or 'a company'}" if not size else f" at a {size}-person firm"
    if place:
        who += f" in {place}"
    parts.append(who)
    return "; ".join(parts)


def _why_now(session: Session, contact: Contact) -> dict[str, Any]:
    score = scoring.breakdown(session, contact.id, 0)
    mql_event = session.scalar(
        select(Event)
        .where(Event.contact_id == contact.id, Event.name == "became_mql")
        .order_by(Event.timestamp.desc())
        .limit(1)
    )
    return {
        "score": score.score,
        "grade": score.grade,
        "by_rule": [total.model_dump(mode="json") for total in score.by_rule],
        "fit": [factor.model_dump(mode="json") for factor in score.fit],
        "prediction": score.prediction.model_dump(mode="json"),
        "mql_event": None
        if mql_event is None
        else {"at": mql_event.timestamp.isoformat(), "properties": mql_event.properties},
    }


def _timeline(session: Session, contact_id: uuid.UUID) -> list[dict[str, Any]]:
    events = session.scalars(
        select(Event)
        .where(Event.contact_id == contact_id, Event.name.in_(KEY_EVENTS))
        .order_by(Event.timestamp.desc())
        .limit(TIMELINE_LENGTH)
    )
    return [
        {"at": e.timestamp.isoformat(), "what": str(e.name).replace("_", " "), "url": e.url}
        for e in events
    ]


def _journey(session: Session, contact: Contact) -> dict[str, Any]:
    visits = session.execute(
        select(Visit.channel, Visit.utm_source, Visit.utm_campaign, func.count())
        .where(Visit.contact_id == contact.id)
        .group_by(Visit.channel, Visit.utm_source, Visit.utm_campaign)
        .order_by(func.count().desc())
    ).all()
    return {
        "first_touch": {
            "at": contact.first_touch_at.isoformat() if contact.first_touch_at else None,
            "channel": contact.first_touch_channel,
            "source": contact.first_touch_source,
            "campaign": contact.first_touch_campaign,
        },
        "last_touch": {
            "at": contact.last_touch_at.isoformat() if contact.last_touch_at else None,
            "channel": contact.last_touch_channel,
            "source": contact.last_touch_source,
            "campaign": contact.last_touch_campaign,
        },
        "channels": [
            {"channel": c, "source": s, "campaign": camp, "visits": n} for c, s, camp, n in visits
        ],
        **_touches_and_credit(session, contact.id),
    }


def _touches_and_credit(session: Session, contact_id: uuid.UUID) -> dict[str, Any]:
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
            for t in touches[-TOUCHPOINTS:]
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


def _journeys(session: Session, contact_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Journey.id, Journey.name, Enrollment.status, Enrollment.entered_at)
        .join(Enrollment, Enrollment.journey_id == Journey.id)
        .where(Enrollment.contact_id == contact_id)
        .order_by(Enrollment.entered_at.desc())
    ).all()
    return [
        {"journey_id": str(jid), "name": name, "status": status, "entered_at": at.isoformat()}
        for jid, name, status, at in rows
    ]


def _previous_owners(session: Session, lead: Lead) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Assignment, Rep.name, Lead.status)
        .join(Lead, Lead.id == Assignment.lead_id)
        .join(Rep, Rep.id == Assignment.rep_id)
        .where(Lead.contact_id == lead.contact_id, Assignment.ended_at.is_not(None))
        .order_by(Assignment.assigned_at)
    ).all()
    return [
        {
            "rep_id": str(a.rep_id),
            "rep_name": name,
            "assigned_at": a.assigned_at.isoformat(),
            "ended_at": a.ended_at.isoformat() if a.ended_at else None,
            "outcome": a.outcome,
            "lead_status": status,
        }
        for a, name, status in rows
    ]


def build(session: Session, lead: Lead) -> dict[str, Any]:
    contact = session.get(Contact, lead.contact_id)
    assert contact is not None
    company = session.get(Company, contact.company_id) if contact.company_id else None
    return {
        "lead_id": str(lead.id),
        "summary": summary_line(session, contact),
        "who": {
            "contact_id": str(contact.id),
            "name": _name(contact),
            "email": contact.email,
            "phone": contact.phone,
            "traits": contact.traits or {},
            "lifecycle_stage": contact.lifecycle_stage,
            "company": None
            if company is None
            else {"id": str(company.id), "name": company.name, "traits": company.traits or {}},
        },
        "why_now": _why_now(session, contact),
        "what_they_did": {
            "page_views": contact.page_views,
            "top_pages": top_pages(session, contact.id),
            "timeline": _timeline(session, contact.id),
        },
        "how_they_came": _journey(session, contact),
        "journeys": _journeys(session, contact.id),
        "previous_owners": _previous_owners(session, lead),
    }
