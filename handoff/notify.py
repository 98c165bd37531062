"""Telling people about leads through channels: the rep's robot and (when the rep asked for
it) an email to the rep when a lead is assigned, the team's robot when an SLA is missed. Sends
are recorded now and leave after commit, so a slow or rate-limited channel never holds
routing up."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError
from channels import service as channels
from channels.models import Robot, Template
from channels.schemas import TemplateCreate
from core.settings import get_settings
from handoff.models import Lead, Rep, Team

log = logging.getLogger(__name__)

# Created on first use; marketers may reword it in the channels admin (same name).
LEAD_EMAIL = TemplateCreate(
    name="Handoff: lead assigned",
    channel="email",
    purpose="transactional",
    subject="New lead for {{ rep.name }}",
    html=(
        "<p>Hi {{ rep.name }},</p><p>A new lead is yours: {{ lead.summary }}</p>"
        "<p>Please accept it by {{ lead.accept_by }} UTC.</p>"
        '<p><a href="{{ lead.dossier_url }}">Open the dossier</a></p>'
    ),
    text=(
        "Hi {{ rep.name }},\n\nA new lead is yours: {{ lead.summary }}\n\n"
        "Please accept it by {{ lead.accept_by }} UTC.\n\nDossier: {{ lead.dossier_url }}\n"
    ),
)


def dossier_url(lead: Lead) -> str:
    return get_settings().public_url.rstrip("/") + f"/api/v1/handoff/leads/{lead.id}/dossier"


def post_to_robot(
    session: Session, robot_id: object, lead: Lead, key: str, title: str, text: str
) -> bool:
    robot = session.get(Robot, robot_id)
    if robot is None:
        return False
    channels.send(
        session,
        contact_id=lead.contact_id,
        channel=robot.kind,
        idempotency_key=key,
        context={"title": title, "markdown": f"{text}\n\n[Dossier]({dossier_url(lead)})"},
        target={"robot_id": str(robot.id)},
        transactional=True,
    )
    return True


def lead_email_template(session: Session) -> uuid.UUID:
    found = session.scalar(
        select(Template.id)
        .where(
            Template.name == LEAD_EMAIL.name,
            Template.channel == "email",
            Template.archived_at.is_(None),
        )
        .order_by(Template.created_at)
        .limit(1)
    )
    return found or channels.create_template(session, LEAD_EMAIL).id


def email_rep(session: Session, lead: Lead, rep: Rep, seq: int, summary: str) -> bool:
    """Emails the rep (an address, not a contact) about the lead; a send the channels refuse
    is logged and does not stop the assignment."""
    if not rep.email:
        return False
    try:
        channels.send_to_address(
            session,
            channel="email",
            to=rep.email,
            template_id=lead_email_template(session),
            idempotency_key=f"handoff:assigned-email:{lead.id}:{seq}",
            context={
                "rep": {"id": str(rep.id), "name": rep.name},
                "lead": {
                    "id": str(lead.id),
                    "summary": summary,
                    "accept_by": f"{lead.accept_by:%Y-%m-%d %H:%M}" if lead.accept_by else "",
                    "dossier_url": dossier_url(lead),
                },
            },
        )
    except ApiError as exc:
        log.warning("not emailing rep %s about lead %s: %s", rep.id, lead.id, exc.message)
        return False
    return True


def lead_assigned(session: Session, lead: Lead, rep: Rep, seq: int, summary: str) -> bool:
    """Tells the rep through each channel they have: their robot, and email if they asked."""
    told = False
    if rep.robot_id is not None:
        title = f"New lead for {rep.name}"
        text = f"**{title}** (accept by {lead.accept_by:%Y-%m-%d %H:%M} UTC)\n\n{summary}"
        key = f"handoff:assigned:{lead.id}:{seq}"
        told = post_to_robot(session, rep.robot_id, lead, key, title, text)
    if rep.notify_by_email:
        told = email_rep(session, lead, rep, seq, summary) or told
    return told


def sla_missed(session: Session, lead: Lead, rep: Rep, seq: int) -> bool:
    team = session.get(Team, rep.team_id) if rep.team_id else None
    if team is None or team.robot_id is None:
        return False
    title = f"SLA missed by {rep.name}"
    text = f"**{title}**: lead {lead.id} was not accepted in time and is being reassigned."
    return post_to_robot(session, team.robot_id, lead, f"handoff:sla:{lead.id}:{seq}", title, text)
