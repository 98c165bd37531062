"""Telling people about leads through channels: the rep's robot when a lead is assigned, the
team's robot when an SLA is missed. Sends are recorded now and leave after commit, so a slow
or rate-limited robot never holds routing up."""

from __future__ import annotations

from sqlalchemy.orm import Session

from channels import service as channels
from channels.models import Robot
from core.settings import get_settings
from handoff.models import Lead, Rep, Team


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


def lead_assigned(session: Session, lead: Lead, rep: Rep, seq: int, summary: str) -> bool:
    if rep.robot_id is None:
        return False
    title = f"New lead for {rep.name}"
    text = f"**{title}** (accept by {lead.accept_by:%Y-%m-%d %H:%M} UTC)\n\n{summary}"
    return post_to_robot(
        session, rep.robot_id, lead, f"handoff:assigned:{lead.id}:{seq}", title, text
    )


def sla_missed(session: Session, lead: Lead, rep: Rep, seq: int) -> bool:
    team = session.get(Team, rep.team_id) if rep.team_id else None
    if team is None or team.robot_id is None:
        return False
    title = f"SLA missed by {rep.name}"
    text = f"**{title}**: lead {lead.id} was not accepted in time and is being reassigned."
    return post_to_robot(session, team.robot_id, lead, f"handoff:sla:{lead.id}:{seq}", title, text)
