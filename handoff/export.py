"""CSV export of leads and their outcomes, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from capture.models import Contact
from handoff.models import Lead, Rep, Team

COLUMNS = (
    "lead_id",
    "contact_id",
    "email",
    "status",
    "team",
    "rep",
    "trigger",
    "mql_at",
    "assigned_at",
    "accepted_at",
    "first_contact_at",
    "attempts",
    "sla_breaches",
    "amount_fen",
    "revenue_fen",
    "close_date",
    "outcome_reason",
    "closed_at",
)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
BATCH = 1000


def cell(value: Any) -> str:
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    # A leading formula character would run as a formula in Excel (CSV injection).
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def leads_csv(session: Session, scope: ColumnElement[bool]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    query = (
        select(Lead, Contact.email, Team.name, Rep.name)
        .join(Contact, Contact.id == Lead.contact_id)
        .outerjoin(Team, Team.id == Lead.team_id)
        .outerjoin(Rep, Rep.id == Lead.rep_id)
        .where(scope)
        .order_by(Lead.created_at, Lead.id)
        .execution_options(yield_per=BATCH)
    )
    for lead, email, team, rep in session.execute(query):
        row = {
            **{c: getattr(lead, c, None) for c in COLUMNS},
            "lead_id": lead.id,
            "email": email,
            "team": team,
            "rep": rep,
        }
        writer.writerow([cell(row[c]) for c in COLUMNS])
    return buffer.getvalue()
