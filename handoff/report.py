"""The speed-to-lead report: per team and rep, how long leads waited from becoming an MQL to
assignment, to acceptance and to the first contact attempt, and how many SLAs were missed."""

from __future__ import annotations

import statistics
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from handoff.models import Assignment, Lead, Rep, Team


def _minutes(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() / 60


def _stats(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    if not known:
        return {"count": 0, "median_minutes": None, "max_minutes": None}
    return {
        "count": len(known),
        "median_minutes": round(statistics.median(known), 2),
        "max_minutes": round(max(known), 2),
    }


def speed_to_lead(
    session: Session, since: datetime, until: datetime, scope: ColumnElement[bool]
) -> list[dict[str, Any]]:
    """One row per team and rep holding leads that became MQLs in [since, until)."""
    first_assigned = (
        select(Assignment.lead_id, func.min(Assignment.assigned_at).label("at"))
        .group_by(Assignment.lead_id)
        .subquery()
    )
    rows = session.execute(
        select(Lead, first_assigned.c.at, Rep.name, Team.name)
        .outerjoin(first_assigned, first_assigned.c.lead_id == Lead.id)
        .outerjoin(Rep, Rep.id == Lead.rep_id)
        .outerjoin(Team, Team.id == Lead.team_id)
        .where(Lead.mql_at >= since, Lead.mql_at < until, scope)
    ).all()
    groups: dict[tuple[uuid.UUID | None, uuid.UUID | None], list[Any]] = defaultdict(list)
    names: dict[tuple[uuid.UUID | None, uuid.UUID | None], tuple[str | None, str | None]] = {}
    for lead, assigned_at, rep_name, team_name in rows:
        key = (lead.team_id, lead.rep_id)
        groups[key].append((lead, assigned_at))
        names[key] = (team_name, rep_name)
    report = []
    for key, items in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        team_name, rep_name = names[key]
        report.append(
            {
                "team_id": str(key[0]) if key[0] else None,
                "team": team_name,
                "rep_id": str(key[1]) if key[1] else None,
                "rep": rep_name,
                "leads": len(items),
                "to_assignment": _stats([_minutes(lead.mql_at, at) for lead, at in items]),
                "to_acceptance": _stats(
                    [_minutes(lead.mql_at, lead.accepted_at) for lead, _ in items]
                ),
                "to_first_contact": _stats(
                    [_minutes(lead.mql_at, lead.first_contact_at) for lead, _ in items]
                ),
                "sla_breaches": sum(lead.sla_breaches for lead, _ in items),
            }
        )
    return report
