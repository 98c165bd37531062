"""The handoff service: teams, reps and rules; routing a contact to a rep once; the SLA that
moves an unaccepted lead on; and what reps do with their leads."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from attribution.service import record_conversion
from capture.models import Contact
from core.clock import clock
from core.db import is_postgres
from core.ids import new_id
from handoff import notify
from handoff.dossier import summary_line
from handoff.models import (
    DEFAULT_SLA_MINUTES,
    OPEN_STATUSES,
    Assignment,
    Lead,
    LeadActivity,
    Rep,
    RoutingDecision,
    RoutingRule,
    Team,
)
from handoff.routing import Decision, Router, load_profile
from handoff.schemas import (
    CrmOutcome,
    OpportunityRequest,
    RepCreate,
    RepUpdate,
    RuleCreate,
    RuleUpdate,
    TeamCreate,
    TeamUpdate,
    WonRequest,
)
from handoff.working_time import WorkingHours
from journeys import register_handoff
from scoring import emit, lifecycle

MAX_MERGE_HOPS = 10
SWEEP_BATCH = 200


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {message}", {field: message})


def not_found(what: str, item_id: object) -> ApiError:
    return ApiError(404, "not_found", f"{what} {item_id} does not exist")


# Teams, reps and rules


def create_team(session: Session, body: TeamCreate) -> Team:
    if session.scalar(select(Team.id).where(Team.name == body.name)) is not None:
        raise invalid("name", f"a team named {body.name!r} already exists")
    team = Team(**body.model_dump())
    session.add(team)
    session.flush()
    return team


def update_team(session: Session, team_id: uuid.UUID, body: TeamUpdate) -> Team:
    team = session.get(Team, team_id)
    if team is None:
        raise not_found("team", team_id)
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes:
        taken = session.scalar(select(Team.id).where(Team.name == changes["name"]))
        if taken is not None and taken != team_id:
            raise invalid("name", f"a team named {changes['name']!r} already exists")
    for name, value in changes.items():
        setattr(team, name, value)
    session.flush()
    return team


def _check_rep_links(session: Session, data: dict[str, Any], rep: Rep | None = None) -> None:
    if data.get("team_id") is not None and session.get(Team, data["team_id"]) is None:
        raise invalid("team_id", f"team {data['team_id']} does not exist")
    by_email = data.get("notify_by_email", rep.notify_by_email if rep else False)
    if by_email and not data.get("email", rep.email if rep else None):
        raise invalid("notify_by_email", "needs the rep's email address")


def create_rep(session: Session, body: RepCreate) -> Rep:
    data = body.model_dump()
    _check_rep_links(session, data)
    rep = Rep(**data)
    session.add(rep)
    session.flush()
    return rep


def update_rep(session: Session, rep_id: uuid.UUID, body: RepUpdate) -> Rep:
    rep = session.get(Rep, rep_id)
    if rep is None:
        raise not_found("rep", rep_id)
    changes = body.model_dump(exclude_unset=True)
    _check_rep_links(session, changes, rep)
    start = changes.get("work_start", rep.work_start)
    end = changes.get("work_end", rep.work_end)
    if start >= end:
        raise invalid("work_start", "must be before work_end")
    for name, value in changes.items():
        setattr(rep, name, value)
    session.flush()
    return rep


def create_rule(session: Session, body: RuleCreate) -> RoutingRule:
    if body.team_id is not None and session.get(Team, body.team_id) is None:
        raise invalid("team_id", f"team {body.team_id} does not exist")
    rule = RoutingRule(**body.model_dump())
    session.add(rule)
    session.flush()
    return rule


def update_rule(session: Session, rule_id: uuid.UUID, body: RuleUpdate) -> RoutingRule:
    rule = session.get(RoutingRule, rule_id)
    if rule is None:
        raise not_found("routing rule", rule_id)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("team_id") is not None and session.get(Team, changes["team_id"]) is None:
        raise invalid("team_id", f"team {changes['team_id']} does not exist")
    for name, value in changes.items():
        setattr(rule, name, value)
    session.flush()
    return rule


# Routing


def lock_for_routing(session: Session, contact_id: uuid.UUID) -> None:
    """Makes two routings of one contact happen one after the other (on PostgreSQL) with a
    lock of handoff's own: a lock on the contact's row would also hold up ingest and scoring
    writing to it, and deadlock with them when a batch routes many contacts."""
    if is_postgres(session):
        key = int.from_bytes(contact_id.bytes[:8], "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(key)))


def current_contact(session: Session, contact_id: uuid.UUID) -> Contact:
    """The contact, followed to whoever it was merged into, locked for routing."""
    for _ in range(MAX_MERGE_HOPS):
        lock_for_routing(session, contact_id)
        contact = session.get(Contact, contact_id, populate_existing=True)
        if contact is None:
            raise invalid("contact_id", f"contact {contact_id} does not exist")
        if contact.merged_into_id is None:
            return contact
        contact_id = contact.merged_into_id
    raise invalid("contact_id", "the contact's merge chain is too long")


def route_contact(
    session: Session,
    contact_id: uuid.UUID,
    trigger: str,
    idempotency_key: str,
    mql_at: datetime | None = None,
    router: Router | None = None,
) -> Lead:
    """Hands the contact to a rep, once: the same key, or an open lead for the contact,
    returns that lead and routes nothing. A batch passes one `router` to every call."""
    existing = session.scalar(select(Lead).where(Lead.idempotency_key == idempotency_key))
    if existing is not None:
        return existing
    contact = current_contact(session, contact_id)
    open_lead = session.scalar(
        select(Lead).where(Lead.contact_id == contact.id, Lead.status.in_(OPEN_STATUSES))
    )
    if open_lead is not None:
        return open_lead
    now = clock.now()
    lead = Lead(
        id=new_id(),
        idempotency_key=idempotency_key,
        contact_id=contact.id,
        status="queued",
        trigger=trigger,
        mql_at=mql_at or now,
        attempts=0,
        sla_breaches=0,
    )
    session.add(lead)
    session.flush()
    assign(session, lead, contact, trigger, now, router)
    return lead


def previous_reps(session: Session, lead: Lead) -> set[uuid.UUID]:
    return set(session.scalars(select(Assignment.rep_id).where(Assignment.lead_id == lead.id)))


def sla_minutes(session: Session, rep: Rep) -> int:
    team = session.get(Team, rep.team_id) if rep.team_id else None
    return team.sla_minutes if team else DEFAULT_SLA_MINUTES


def assign(
    session: Session,
    lead: Lead,
    contact: Contact,
    trigger: str,
    now: datetime,
    router: Router | None = None,
) -> None:
    """Runs the rules for the lead (never back to a rep who already had it) and records the
    decision; the chosen rep is notified. With nobody eligible the lead goes to the fallback
    queue when a fallback rule says so, and otherwise waits for the next eligible rep."""
    router = router or Router(session, now)
    decision = router.decide(load_profile(session, contact), previous_reps(session, lead))
    apply_decision(session, lead, contact, decision, trigger, now)
    if decision.rep is not None:
        router.took(decision.rep)


def apply_decision(
    session: Session, lead: Lead, contact: Contact, decision: Decision, trigger: str, now: datetime
) -> None:
    session.add(
        RoutingDecision(
            lead_id=lead.id,
            trigger=trigger,
            rule_id=decision.rule.id if decision.rule else None,
            rule_name=decision.rule_name,
            rule_kind=decision.rule_kind,
            rep_id=decision.rep.id if decision.rep else None,
            skipped=decision.skipped,
            decided_at=now,
        )
    )
    lead.team_id = decision.team_id
    if decision.rep is None:
        lead.status = "queued" if decision.rule else "waiting"
        lead.rep_id, lead.assigned_at, lead.accept_by = None, None, None
        session.flush()
        return
    hand_to(session, lead, contact, decision.rep, now)


def route_waiting(session: Session) -> int:
    """Routes waiting leads to reps who have since become eligible (back on duty, into their
    working hours, below capacity); a lead still without anyone records nothing new."""
    now = clock.now()
    query = select(Lead).where(Lead.status == "waiting").order_by(Lead.mql_at).limit(SWEEP_BATCH)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    leads = list(session.scalars(query))
    if not leads:
        return 0
    router, routed = Router(session, now), 0
    for lead in leads:
        contact = session.get(Contact, lead.contact_id)
        assert contact is not None
        decision = router.decide(load_profile(session, contact), previous_reps(session, lead))
        if decision.rep is None and decision.rule is None:
            continue
        apply_decision(session, lead, contact, decision, "retry", now)
        if decision.rep is not None:
            router.took(decision.rep)
            routed += 1
    return routed


def hand_to(session: Session, lead: Lead, contact: Contact, rep: Rep, now: datetime) -> None:
    """Gives the lead to the rep with an SLA deadline in the rep's working time, and tells them."""
    seq = (session.scalar(select(func.count()).where(Assignment.lead_id == lead.id)) or 0) + 1
    session.add(Assignment(lead_id=lead.id, seq=seq, rep_id=rep.id, assigned_at=now))
    hours = WorkingHours.of(rep.timezone, rep.work_days, rep.work_start, rep.work_end)
    lead.status, lead.rep_id, lead.team_id, lead.assigned_at = "assigned", rep.id, rep.team_id, now
    lead.accept_by = hours.add(now, sla_minutes(session, rep))
    session.flush()
    track(session, lead, "lead_assigned", {"rep_id": str(rep.id), "seq": seq}, now)
    notify.lead_assigned(session, lead, rep, seq, summary_line(session, contact))


def assign_by_hand(session: Session, lead: Lead, rep_id: uuid.UUID) -> Lead:
    """An admin gives a queued or waiting lead (or moves an unaccepted one) to a rep of their
    choosing."""
    _require(lead, "queued", "waiting", "assigned")
    rep = session.get(Rep, rep_id)
    if rep is None or rep.role != "rep":
        raise invalid("rep_id", f"rep {rep_id} does not exist")
    now = clock.now()
    if lead.status == "assigned":
        end_assignment(session, lead, "reassigned", now)
    session.add(
        RoutingDecision(
            lead_id=lead.id,
            trigger="by_hand",
            rule_id=None,
            rule_name="assigned by hand",
            rule_kind="manual",
            rep_id=rep.id,
            skipped=[],
            decided_at=now,
        )
    )
    contact = session.get(Contact, lead.contact_id)
    assert contact is not None
    hand_to(session, lead, contact, rep, now)
    return lead


def track(
    session: Session, lead: Lead, name: str, properties: dict[str, Any], now: datetime
) -> None:
    """Puts the event on the contact's timeline (journeys and scoring react to it); it is
    queued once, after commit, and its message id keeps a replay of the queue harmless."""
    properties = {"lead_id": str(lead.id), **properties}
    message_id = f"handoff:{name}:{lead.id}:{uuid.uuid4()}"
    emit.track(session, [(lead.contact_id, name, properties, message_id, now)])


def end_assignment(session: Session, lead: Lead, outcome: str, now: datetime) -> Rep | None:
    assignment = session.scalar(
        select(Assignment)
        .where(Assignment.lead_id == lead.id, Assignment.ended_at.is_(None))
        .order_by(Assignment.seq.desc())
    )
    if assignment is None:
        return None
    assignment.ended_at, assignment.outcome = now, outcome
    return session.get(Rep, assignment.rep_id)


def record_activity(
    session: Session, lead: Lead, kind: str, rep_id: uuid.UUID | None, details: dict[str, Any]
) -> None:
    session.add(
        LeadActivity(
            lead_id=lead.id, kind=kind, rep_id=rep_id, details=details, occurred_at=clock.now()
        )
    )


# The SLA


def enforce_sla(session: Session) -> int:
    """Moves every lead not accepted by its deadline to the next eligible rep and alerts the
    team; returns how many were moved on."""
    now = clock.now()
    query = (
        select(Lead)
        .where(Lead.status == "assigned", Lead.accept_by <= now)
        .order_by(Lead.accept_by)
        .limit(SWEEP_BATCH)
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    leads = list(session.scalars(query))
    for lead in leads:
        late_rep = end_assignment(session, lead, "sla_missed", now)
        lead.sla_breaches += 1
        seq = session.scalar(select(func.count()).where(Assignment.lead_id == lead.id)) or 0
        record_activity(
            session,
            lead,
            "sla_missed",
            lead.rep_id,
            {"accept_by": lead.accept_by.isoformat() if lead.accept_by else None},
        )
        if late_rep is not None:
            alerted = notify.sla_missed(session, lead, late_rep, seq)
            record_activity(session, lead, "manager_alerted", late_rep.id, {"sent": alerted})
        contact = session.get(Contact, lead.contact_id)
        assert contact is not None
        assign(session, lead, contact, "sla_reassign", now)
    return len(leads)


# What reps do


def _require(lead: Lead, *statuses: str) -> None:
    if lead.status not in statuses:
        raise ApiError(
            409,
            "conflict",
            f"lead {lead.id} is {lead.status}; this needs it to be {' or '.join(statuses)}",
        )


def _advance_stage(session: Session, lead: Lead, stage: str, reason: str, now: datetime) -> None:
    move = lifecycle.Move(lead.contact_id, stage, now, "handoff", reason)
    lifecycle.advance(session, [move], now)


def accept(session: Session, lead: Lead, rep_id: uuid.UUID | None) -> Lead:
    _require(lead, "assigned")
    now = clock.now()
    lead.status, lead.accepted_at = "accepted", now
    record_activity(session, lead, "accepted", rep_id, {})
    track(session, lead, "sales_accepted", {"rep_id": str(lead.rep_id)}, now)
    _advance_stage(session, lead, "sql", "accepted by sales", now)
    session.flush()
    return lead


def reject(
    session: Session, lead: Lead, rep_id: uuid.UUID | None, reason: str, note: str | None
) -> Lead:
    """A wrong territory goes back through routing (to someone else); any other reason
    closes the lead."""
    _require(lead, "assigned", "accepted")
    now = clock.now()
    end_assignment(session, lead, f"rejected:{reason}", now)
    record_activity(session, lead, "rejected", rep_id, {"reason": reason, "note": note})
    track(session, lead, "lead_rejected", {"reason": reason}, now)
    if reason == "wrong_territory":
        contact = session.get(Contact, lead.contact_id)
        assert contact is not None
        assign(session, lead, contact, "reroute", now)
    else:
        lead.status, lead.outcome_reason, lead.closed_at = "rejected", reason, now
        lead.accept_by = None
    session.flush()
    return lead


def log_attempt(
    session: Session, lead: Lead, rep_id: uuid.UUID | None, channel: str, note: str | None
) -> Lead:
    _require(lead, "assigned", "accepted", "opportunity")
    now = clock.now()
    lead.attempts += 1
    if lead.first_contact_at is None:
        lead.first_contact_at = now
    record_activity(session, lead, "attempt", rep_id, {"channel": channel, "note": note})
    track(session, lead, "contact_attempted", {"channel": channel}, now)
    session.flush()
    return lead


def deal_ref(lead: Lead) -> str:
    return f"lead:{lead.id}"


def convert(
    session: Session, lead: Lead, rep_id: uuid.UUID | None, body: OpportunityRequest
) -> Lead:
    _require(lead, "accepted")
    now = clock.now()
    lead.status, lead.amount_fen, lead.close_date = "opportunity", body.amount_fen, body.close_date
    details = {"amount_fen": body.amount_fen, "close_date": body.close_date.isoformat()}
    record_activity(session, lead, "opportunity", rep_id, details)
    track(session, lead, "opportunity_created", details, now)
    record_conversion(session, lead.contact_id, "opportunity", body.amount_fen, now, deal_ref(lead))
    _advance_stage(session, lead, "opportunity", "opportunity created", now)
    session.flush()
    return lead


def won(session: Session, lead: Lead, rep_id: uuid.UUID | None, body: WonRequest) -> Lead:
    _require(lead, "accepted", "opportunity")
    now = clock.now()
    lead.status, lead.revenue_fen, lead.close_date = "won", body.revenue_fen, body.close_date
    lead.closed_at = now
    end_assignment(session, lead, "won", now)
    details = {"revenue_fen": body.revenue_fen, "close_date": body.close_date.isoformat()}
    record_activity(session, lead, "won", rep_id, details)
    track(session, lead, "deal_won", details, now)
    record_conversion(session, lead.contact_id, "won", body.revenue_fen, now, deal_ref(lead))
    _advance_stage(session, lead, "customer", "deal won", now)
    session.flush()
    return lead


def lost(session: Session, lead: Lead, rep_id: uuid.UUID | None, reason: str) -> Lead:
    _require(lead, "accepted", "opportunity")
    now = clock.now()
    lead.status, lead.outcome_reason, lead.closed_at = "lost", reason, now
    end_assignment(session, lead, "lost", now)
    record_activity(session, lead, "lost", rep_id, {"reason": reason})
    track(session, lead, "deal_lost", {"reason": reason}, now)
    session.flush()
    return lead


# Outcomes from an external CRM


def crm_outcome(session: Session, body: CrmOutcome) -> Lead:
    """Applies a CRM's outcome to the lead its deal id names. A CRM redelivers webhooks, so an
    outcome the lead already has changes nothing."""
    by_deal = select(Lead).where(Lead.external_deal_id == body.external_deal_id)
    lock = is_postgres(session)
    lead = session.scalar(by_deal.with_for_update() if lock else by_deal)
    if lead is None:
        if body.lead_id is None:
            raise invalid("lead_id", "is required the first time a deal id is seen")
        lead = session.get(Lead, body.lead_id, with_for_update=lock)
        if lead is None:
            raise invalid("lead_id", f"lead {body.lead_id} does not exist")
        if lead.external_deal_id is not None:
            raise invalid("lead_id", f"lead {lead.id} is already deal {lead.external_deal_id}")
        lead.external_deal_id = body.external_deal_id
    elif body.lead_id is not None and body.lead_id != lead.id:
        raise invalid("lead_id", f"deal {body.external_deal_id} belongs to lead {lead.id}")
    if lead.status == body.outcome:
        return lead
    if lead.status == "assigned":
        accept(session, lead, None)
    if body.outcome == "lost":
        assert body.reason is not None
        return lost(session, lead, None, body.reason)
    assert body.amount_fen is not None and body.close_date is not None
    if body.outcome == "opportunity":
        return convert(
            session,
            lead,
            None,
            OpportunityRequest(amount_fen=body.amount_fen, close_date=body.close_date),
        )
    return won(
        session, lead, None, WonRequest(revenue_fen=body.amount_fen, close_date=body.close_date)
    )


def hand_off_from_journey(
    session: Session,
    *,
    contact_id: uuid.UUID,
    journey_id: uuid.UUID,
    enrollment_id: uuid.UUID,
    reason: str | None,
    idempotency_key: str,
) -> dict[str, Any]:
    """A journey's handoff action: routes the contact once per step key (an open lead for
    the contact is kept), and tells the journey's step history what happened."""
    lead = route_contact(session, contact_id, "journey", idempotency_key)
    return {
        "lead_id": str(lead.id),
        "lead_status": lead.status,
        "rep_id": str(lead.rep_id) if lead.rep_id else None,
        "reason": reason,
    }


register_handoff(hand_off_from_journey)
