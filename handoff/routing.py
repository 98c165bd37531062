"""The routing decision: ordered rules tried in turn, the first that finds an eligible rep wins;
each rep passed over is kept with the reason, and nobody eligible means the fallback queue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from capture.models import Company, Contact
from core.db import is_postgres
from handoff.models import OPEN_STATUSES, Assignment, Lead, Rep, RoutingRule
from handoff.territories import contact_location
from handoff.working_time import WorkingHours
from journeys.conditions import Compiler, parse
from scoring.rules import FREE_EMAIL_DOMAINS

FALLBACK = "fallback"


@dataclass
class Decision:
    rule: RoutingRule | None
    rep: Rep | None
    team_id: uuid.UUID | None
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rule_name(self) -> str:
        return self.rule.name if self.rule else "no rule matched: fallback queue"

    @property
    def rule_kind(self) -> str:
        return self.rule.kind if self.rule else FALLBACK


@dataclass(frozen=True)
class Profile:
    """What routing looks at: the contact's traits and its company's."""

    contact: Contact
    company_traits: dict[str, Any]

    def value(self, path: str) -> Any:
        scope, _, key = path.partition(".")
        return (self.contact.traits or {} if scope == "traits" else self.company_traits).get(key)

    def industries(self) -> set[str]:
        values = [
            self.value("traits.industry"),
            self.value("traits.product_line"),
            self.value("company.industry"),
            self.value("company.product_line"),
        ]
        return {v.strip().lower() for v in values if isinstance(v, str) and v.strip()}


def load_profile(session: Session, contact: Contact) -> Profile:
    company = session.get(Company, contact.company_id) if contact.company_id else None
    return Profile(contact, dict(company.traits or {}) if company else {})


def condition_holds(
    session: Session, condition: dict[str, Any] | None, contact: Contact, now: datetime
) -> bool:
    if condition is None:
        return True
    test = Compiler(now, is_postgres(session)).compile(parse(condition))
    return bool(session.scalar(select(exists().where(Contact.id == contact.id, test))))


def open_lead_counts(session: Session) -> dict[uuid.UUID, int]:
    query = (
        select(Lead.rep_id, func.count())
        .where(Lead.status.in_(OPEN_STATUSES), Lead.rep_id.is_not(None))
        .group_by(Lead.rep_id)
    )
    return {rep_id: count for rep_id, count in session.execute(query).all() if rep_id}


def assignment_counts(session: Session) -> dict[uuid.UUID, int]:
    query = select(Assignment.rep_id, func.count()).group_by(Assignment.rep_id)
    return {rep_id: count for rep_id, count in session.execute(query).all()}


def email_domain(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].lower()
    return None if domain in FREE_EMAIL_DOMAINS else domain


def previous_owners(session: Session, contact: Contact) -> list[uuid.UUID]:
    """Reps who owned this contact, or a colleague at the same company or email domain, the
    most recent first."""
    same_account = [Lead.contact_id == contact.id]
    if contact.company_id is not None:
        same_account.append(Contact.company_id == contact.company_id)
    if domain := email_domain(contact.email):
        same_account.append(func.lower(Contact.email).like(f"%@{domain}"))
    query = (
        select(Lead.rep_id)
        .join(Contact, Contact.id == Lead.contact_id)
        .where(Lead.rep_id.is_not(None), or_(*same_account))
        .order_by(Lead.created_at.desc())
    )
    owners: list[uuid.UUID] = []
    for rep_id in session.scalars(query):
        if rep_id is not None and rep_id not in owners:
            owners.append(rep_id)
    return owners


class Router:
    """Decides at one moment, for one contact or a batch: loads the rules, the reps and their
    loads once, and counts each lead it hands out."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self.rules = active_rules(session)
        self.reps = list(session.scalars(select(Rep).where(Rep.role == "rep").order_by(Rep.id)))
        self.open_leads = open_lead_counts(session)
        self.assigned = assignment_counts(session)

    def took(self, rep: Rep) -> None:
        """Counts a lead just given to the rep, for the next decision of this router."""
        self.open_leads[rep.id] = self.open_leads.get(rep.id, 0) + 1
        self.assigned[rep.id] = self.assigned.get(rep.id, 0) + 1

    def skip_reason(self, rep: Rep, excluded: set[uuid.UUID]) -> str | None:
        if rep.id in excluded:
            return "already had this lead"
        if not rep.on_duty:
            return "off duty"
        hours = WorkingHours.of(rep.timezone, rep.work_days, rep.work_start, rep.work_end)
        if not hours.contains(self.now):
            return "outside working hours"
        if self.open_leads.get(rep.id, 0) >= rep.capacity:
            return "at capacity"
        return None

    def candidates(self, rule: RoutingRule, profile: Profile) -> list[Rep]:
        reps = [r for r in self.reps if rule.team_id is None or r.team_id == rule.team_id]
        if rule.kind == "existing_owner":
            by_id = {r.id: r for r in reps}
            return [by_id[o] for o in previous_owners(self.session, profile.contact) if o in by_id]
        if rule.kind == "territory":
            location = contact_location(profile.contact.traits or {}, profile.company_traits)
            return [
                r for r in reps if {f"{t['kind']}:{t['name']}" for t in r.territories} & location
            ]
        if rule.kind == "industry":
            industries = profile.industries()
            return [r for r in reps if set(r.industries) & industries]
        return reps

    def pick(self, rule: RoutingRule, eligible: list[Rep]) -> Rep:
        if rule.kind == "existing_owner":
            return eligible[0]
        if rule.strategy == "weighted":
            # Weighted round-robin: whoever has had the fewest leads for their weight is next.
            return min(eligible, key=lambda r: (self.assigned.get(r.id, 0) / r.weight, str(r.id)))
        return min(eligible, key=lambda r: (self.open_leads.get(r.id, 0), -r.weight, str(r.id)))

    def decide(self, profile: Profile, excluded: set[uuid.UUID]) -> Decision:
        """`excluded` reps are passed over (they already had this lead)."""
        skipped: list[dict[str, Any]] = []
        for rule in self.rules:
            if not condition_holds(self.session, rule.condition, profile.contact, self.now):
                continue
            if rule.kind == FALLBACK:
                return Decision(rule, None, rule.team_id, skipped)
            eligible = []
            for rep in self.candidates(rule, profile):
                reason = self.skip_reason(rep, excluded)
                if reason is None:
                    eligible.append(rep)
                else:
                    skipped.append({"rep_id": str(rep.id), "rule": rule.name, "reason": reason})
            if eligible:
                rep = self.pick(rule, eligible)
                return Decision(rule, rep, rep.team_id, skipped)
        return Decision(None, None, None, skipped)


def active_rules(session: Session) -> list[RoutingRule]:
    query = select(RoutingRule).where(RoutingRule.enabled.is_(True))
    return list(session.scalars(query.order_by(RoutingRule.position, RoutingRule.created_at)))
