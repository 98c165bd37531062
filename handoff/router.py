"""The handoff API (`/api/v1/handoff`): teams, reps and routing rules for admins; leads, their
dossiers and rep actions for whoever may see each lead."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from sqlalchemy import select

from api.deps import AdminKey, CurrentKey, RequireRole, SessionDep
from api.errors import ApiError
from core.clock import clock
from core.db import is_postgres
from core.keys import ApiKey, Role
from handoff import dossier, export, report, service
from handoff.access import Viewer, viewer_of, visible_lead
from handoff.models import Lead, LeadActivity, Rep, RoutingDecision, RoutingRule, Team
from handoff.schemas import (
    ActivityRead,
    AssignRequest,
    AttemptRequest,
    CrmOutcome,
    DecisionRead,
    LeadDetail,
    LeadRead,
    LostRequest,
    OpportunityRequest,
    RejectRequest,
    RepCreate,
    RepRead,
    RepUpdate,
    RouteRequest,
    RuleCreate,
    RuleRead,
    RuleUpdate,
    TeamCreate,
    TeamRead,
    TeamUpdate,
    WonRequest,
)

router = APIRouter(prefix="/api/v1/handoff", tags=["handoff"])
RouterKey = Annotated[ApiKey, Depends(RequireRole(Role.marketer, Role.manager))]


def current_viewer(session: SessionDep, key: CurrentKey) -> Viewer:
    return viewer_of(session, key)


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


@router.post("/teams", status_code=201)
def create_team(body: TeamCreate, session: SessionDep, _key: AdminKey) -> TeamRead:
    return TeamRead.model_validate(service.create_team(session, body))


@router.get("/teams")
def list_teams(session: SessionDep, _key: AdminKey) -> list[TeamRead]:
    return [TeamRead.model_validate(t) for t in session.scalars(select(Team).order_by(Team.name))]


@router.patch("/teams/{team_id}")
def update_team(
    team_id: uuid.UUID, body: TeamUpdate, session: SessionDep, _key: AdminKey
) -> TeamRead:
    return TeamRead.model_validate(service.update_team(session, team_id, body))


@router.post("/reps", status_code=201)
def create_rep(body: RepCreate, session: SessionDep, _key: AdminKey) -> RepRead:
    return RepRead.model_validate(service.create_rep(session, body))


@router.get("/reps")
def list_reps(session: SessionDep, _key: AdminKey) -> list[RepRead]:
    return [RepRead.model_validate(r) for r in session.scalars(select(Rep).order_by(Rep.name))]


@router.patch("/reps/{rep_id}")
def update_rep(rep_id: uuid.UUID, body: RepUpdate, session: SessionDep, _key: AdminKey) -> RepRead:
    return RepRead.model_validate(service.update_rep(session, rep_id, body))


@router.post("/rules", status_code=201)
def create_rule(body: RuleCreate, session: SessionDep, _key: AdminKey) -> RuleRead:
    return RuleRead.model_validate(service.create_rule(session, body))


@router.patch("/rules/{rule_id}")
def update_rule(
    rule_id: uuid.UUID, body: RuleUpdate, session: SessionDep, _key: AdminKey
) -> RuleRead:
    """Moves, renames, retargets, enables or disables a rule (its kind stays)."""
    return RuleRead.model_validate(service.update_rule(session, rule_id, body))


@router.get("/rules")
def list_rules(session: SessionDep, _key: AdminKey) -> list[RuleRead]:
    rules = session.scalars(select(RoutingRule).order_by(RoutingRule.position))
    return [RuleRead.model_validate(r) for r in rules]


@router.post("/leads", status_code=201)
def route_by_hand(
    body: RouteRequest,
    session: SessionDep,
    _key: RouterKey,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> LeadRead:
    """Routes the contact now; a contact with an open lead keeps it (that lead is returned), and
    a retried request with the same Idempotency-Key header routes nothing."""
    key = f"manual:{idempotency_key or uuid.uuid4()}"
    lead = service.route_contact(session, body.contact_id, "manual", key)
    return LeadRead.model_validate(lead)


@router.get("/leads")
def list_leads(session: SessionDep, viewer: ViewerDep, status: str | None = None) -> list[LeadRead]:
    query = select(Lead).where(viewer.lead_filter()).order_by(Lead.created_at.desc()).limit(500)
    if status is not None:
        query = query.where(Lead.status == status)
    return [LeadRead.model_validate(lead) for lead in session.scalars(query)]


@router.get("/leads.csv")
def export_leads(session: SessionDep, viewer: ViewerDep) -> Response:
    """Every lead the caller may see, with its outcome, as CSV."""
    return Response(
        export.leads_csv(session, viewer.lead_filter()),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="leads.csv"'},
    )


@router.get("/reports/speed-to-lead")
def speed_to_lead(
    session: SessionDep,
    viewer: ViewerDep,
    since: datetime | None = Query(default=None, description="default: 30 days ago"),
    until: datetime | None = Query(default=None, description="default: now"),
) -> list[dict[str, Any]]:
    """Minutes from MQL to assignment, acceptance and first contact, per team and rep."""
    until = until or clock.now()
    since = since or until - timedelta(days=30)
    if since.tzinfo is None or until.tzinfo is None:
        message = "needs a time zone, e.g. 2026-03-01T00:00:00+08:00"
        raise ApiError(422, "invalid", f"since and until: {message}", {"since": message})
    if since >= until:
        raise ApiError(
            422, "invalid", "since: must be before until", {"since": "must be before until"}
        )
    return report.speed_to_lead(
        session, since.astimezone(UTC), until.astimezone(UTC), viewer.lead_filter()
    )


@router.get("/leads/{lead_id}")
def get_lead(lead_id: uuid.UUID, session: SessionDep, viewer: ViewerDep) -> LeadDetail:
    lead = visible_lead(session, viewer, lead_id)
    decisions = session.scalars(
        select(RoutingDecision)
        .where(RoutingDecision.lead_id == lead.id)
        .order_by(RoutingDecision.id)
    )
    activities = session.scalars(
        select(LeadActivity).where(LeadActivity.lead_id == lead.id).order_by(LeadActivity.id)
    )
    return LeadDetail(
        **LeadRead.model_validate(lead).model_dump(),
        decisions=[DecisionRead.model_validate(d) for d in decisions],
        activities=[ActivityRead.model_validate(a) for a in activities],
    )


@router.get("/leads/{lead_id}/dossier")
def get_dossier(lead_id: uuid.UUID, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    return dossier.build(session, visible_lead(session, viewer, lead_id))


def actor(viewer: Viewer) -> uuid.UUID | None:
    return viewer.rep.id if viewer.rep else None


@router.post("/leads/{lead_id}/assign")
def assign_by_hand(
    lead_id: uuid.UUID, body: AssignRequest, session: SessionDep, _key: AdminKey
) -> LeadRead:
    """Gives a queued or waiting lead (or an unaccepted one) to the named rep."""
    lead = session.get(Lead, lead_id, with_for_update=is_postgres(session))
    if lead is None:
        raise ApiError(404, "not_found", f"lead {lead_id} does not exist")
    return LeadRead.model_validate(service.assign_by_hand(session, lead, body.rep_id))


@router.post("/leads/{lead_id}/accept")
def accept(lead_id: uuid.UUID, session: SessionDep, viewer: ViewerDep) -> LeadRead:
    lead = visible_lead(session, viewer, lead_id, for_update=True)
    return LeadRead.model_validate(service.accept(session, lead, actor(viewer)))


@router.post("/leads/{lead_id}/reject")
def reject(
    lead_id: uuid.UUID, body: RejectRequest, session: SessionDep, viewer: ViewerDep
) -> LeadRead:
    lead = visible_lead(session, viewer, lead_id, for_update=True)
    return LeadRead.model_validate(
        service.reject(session, lead, actor(viewer), body.reason, body.note)
    )


@router.post("/leads/{lead_id}/attempts")
def log_attempt(
    lead_id: uuid.UUID, body: AttemptRequest, session: SessionDep, viewer: ViewerDep
) -> LeadRead:
    lead = visible_lead(session, viewer, lead_id, for_update=True)
    return LeadRead.model_validate(
        service.log_attempt(session, lead, actor(viewer), body.channel, body.note)
    )


@router.post("/leads/{lead_id}/opportunity")
def convert(
    lead_id: uuid.UUID, body: OpportunityRequest, session: SessionDep, viewer: ViewerDep
) -> LeadRead:
    lead = visible_lead(session, viewer, lead_id, for_update=True)
    return LeadRead.model_validate(service.convert(session, lead, actor(viewer), body))


@router.post("/leads/{lead_id}/won")
def won(lead_id: uuid.UUID, body: WonRequest, session: SessionDep, viewer: ViewerDep) -> LeadRead:
    lead = visible_lead(session, viewer, lead_id, for_update=True)
    return LeadRead.model_validate(service.won(session, lead, actor(viewer), body))


@router.post("/leads/{lead_id}/lost")
def lost(lead_id: uuid.UUID, body: LostRequest, session: SessionDep, viewer: ViewerDep) -> LeadRead:
    lead = visible_lead(session, viewer, lead_id, for_update=True)
    return LeadRead.model_validate(service.lost(session, lead, actor(viewer), body.reason))


@router.post("/crm/outcomes")
def crm_outcome(body: CrmOutcome, session: SessionDep, _key: AdminKey) -> LeadRead:
    """An external CRM reports a deal's outcome (call it from the CRM's webhook)."""
    return LeadRead.model_validate(service.crm_outcome(session, body))
