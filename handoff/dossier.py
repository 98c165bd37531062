"""The dossier: everything a rep needs before calling, led by a one-line summary — who, why
now, what they did, how they came, the journeys they are in, and who had them before."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from attribution import contact_attribution
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
RECENT = timedelta(days=7)


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
        **contact_attribution(session, contact.id),
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
