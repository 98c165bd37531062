"""Who may see which leads: a rep their own, a manager their team's, an admin every lead."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, false, true
from sqlalchemy.orm import Session

from api.errors import ApiError
from core.db import is_postgres
from core.keys import ApiKey, Role
from handoff.models import Lead, Rep


@dataclass(frozen=True)
class Viewer:
    role: str
    rep: Rep | None

    def lead_filter(self) -> ColumnElement[bool]:
        if self.rep is None:
            return true()
        if self.role == Role.manager:
            # A manager outside any team sees nothing (not the team-less leads).
            return false() if self.rep.team_id is None else Lead.team_id == self.rep.team_id
        return Lead.rep_id == self.rep.id

    def can_see(self, lead: Lead) -> bool:
        if self.rep is None:
            return True
        if self.role == Role.manager:
            return lead.team_id is not None and lead.team_id == self.rep.team_id
        return lead.rep_id == self.rep.id


def viewer_of(session: Session, key: ApiKey) -> Viewer:
    """Admins see everything; rep and manager keys act as the rep their `user_id` names."""
    if key.role == Role.admin:
        return Viewer(key.role, None)
    if key.role not in (Role.rep, Role.manager):
        raise ApiError(403, "forbidden", "leads are for the admin, manager and rep roles")
    rep = session.get(Rep, key.user_id) if key.user_id else None
    if rep is None or rep.role != key.role:
        raise ApiError(403, "forbidden", f"this key is not linked to a {key.role} user")
    return Viewer(key.role, rep)


def visible_lead(
    session: Session, viewer: Viewer, lead_id: uuid.UUID, for_update: bool = False
) -> Lead:
    """The lead, or 404 alike whether it does not exist or belongs to someone else, so ids
    cannot be probed. `for_update` locks it against the SLA sweep acting at the same time."""
    lead = session.get(Lead, lead_id, with_for_update=for_update and is_postgres(session))
    if lead is None or not viewer.can_see(lead):
        raise ApiError(404, "not_found", f"lead {lead_id} does not exist")
    return lead
