"""The ROI report: per campaign and per channel, for a date range under one model, added up
from a stored credit run and the imported costs, reconciled to won revenue and to the costs,
exportable as CSV, and drilled down to the touches and deals behind each figure.

A report never computes credits: conversions the background has not credited yet are shown
in their own `(pending)` row, so the figures still add up to what was recorded."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from attribution import tasks
from attribution.credits import DATA_DRIVEN, Level, RunParameters, stored_run
from attribution.db_models import (
    Campaign,
    CampaignCost,
    Conversion,
    ConversionKind,
    Credit,
    CreditRun,
    RunConversion,
)
from attribution.models import Model
from attribution.money import CURRENCIES, fen_ratio, yuan
from core.db import consistent_reads
from core.settings import get_settings
from core.tasks import enqueue_after_commit

MAX_RANGE_DAYS = 3660
NO_CAMPAIGN = "(no campaign)"
UNATTRIBUTED = "(unattributed)"
PENDING = "(pending)"
TOTAL = "(total)"
COUNTED = {
    ConversionKind.lead: "leads",
    ConversionKind.mql: "mqls",
    ConversionKind.opportunity: "opportunities",
    ConversionKind.won: "customers",
}


class GroupBy(StrEnum):
    campaign = "campaign"
    channel = "channel"


@dataclass(frozen=True)
class DateRange:
    """Whole days in the service's time zone, both ends included."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("end is before start")
        if (self.end - self.start).days >= MAX_RANGE_DAYS:
            raise ValueError(f"a report covers at most {MAX_RANGE_DAYS} days")

    @property
    def instants(self) -> tuple[datetime, datetime]:
        zone = ZoneInfo(get_settings().default_timezone)
        begin = datetime.combine(self.start, time(0), zone).astimezone(UTC)
        finish = datetime.combine(self.end + timedelta(days=1), time(0), zone).astimezone(UTC)
        return begin, finish


@dataclass
class Row:
    """One campaign, channel, or the unattributed remainder; money in fen, counts fractional
    because a conversion's credit can be shared by several campaigns."""

    type: str
    key: str
    name: str | None = None
    channel: str | None = None
    cost: int = 0
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTED.values(), 0.0))
    pipeline: int = 0
    revenue: int = 0
    sourced_pipeline: int = 0
    influenced_pipeline: int = 0

    def as_json(self) -> dict[str, Any]:
        cost = self.cost
        return {
            "type": self.type,
            "key": self.key,
            "name": self.name,
            "channel": self.channel,
            "cost": yuan(cost),
            **{name: round(value, 4) for name, value in self.counts.items()},
            "pipeline": yuan(self.pipeline),
            "revenue": yuan(self.revenue),
            "sourced_pipeline": yuan(self.sourced_pipeline),
            "influenced_pipeline": yuan(self.influenced_pipeline),
            "roi": round((self.revenue - cost) / cost, 4) if cost else None,
            "roas": round(self.revenue / cost, 4) if cost else None,
            "cost_per_lead": _per(cost, self.counts["leads"]),
            "cost_per_mql": _per(cost, self.counts["mqls"]),
            "cac": _per(cost, self.counts["customers"]),
        }


def _per(cost: int, count: float) -> str | None:
    fen = fen_ratio(cost, count) if cost else None
    return None if fen is None else yuan(fen)


CSV_FIELDS = (
    "type",
    "key",
    "name",
    "channel",
    "cost",
    *COUNTED.values(),
    "pipeline",
    "revenue",
    "sourced_pipeline",
    "influenced_pipeline",
    "roi",
    "roas",
    "cost_per_lead",
    "cost_per_mql",
    "cac",
)


def roi_report(session: Session, days: DateRange, parameters: RunParameters) -> dict[str, Any]:
    """The whole report: both groupings, the totals, the reconciliation and how fresh the
    stored credits are, all read from one snapshot so that they add up while the background
    credits new conversions."""
    created = [_run(session, _parameters_for(parameters, group))[1] for group in GroupBy]
    if any(created):  # not committed yet, so not in a snapshot; nothing is credited anyway
        return _report(session, days, parameters)
    with consistent_reads(session) as snapshot:
        return _report(snapshot, days, parameters)


def _report(session: Session, days: DateRange, parameters: RunParameters) -> dict[str, Any]:
    recorded = _recorded(session, days)
    tables = {}
    runs: dict[str, CreditRun] = {}
    for group in GroupBy:
        for_group = _parameters_for(parameters, group)
        if for_group.key not in runs:
            runs[for_group.key] = _run(session, for_group)[0]
        tables[group.value] = _rows(session, runs[for_group.key], days, group, recorded)
    reconciliation = _reconciliation(session, days, tables, recorded)
    group_runs = {group.value: runs[_parameters_for(parameters, group).key] for group in GroupBy}
    return {
        "model": parameters.model.value,
        "parameters": {
            "lookback_days": parameters.lookback_days,
            "half_life_days": parameters.half_life_days,
            "order": parameters.order,
        },
        "start": days.start.isoformat(),
        "end": days.end.isoformat(),
        "timezone": get_settings().default_timezone,
        "currency": CURRENCIES[0],
        "runs": {group: run.id for group, run in group_runs.items()},
        "freshness": {group: _freshness(run, tables[group]) for group, run in group_runs.items()},
        "campaigns": [row.as_json() for row in tables[GroupBy.campaign.value]],
        "channels": [row.as_json() for row in tables[GroupBy.channel.value]],
        "totals": _total(tables[GroupBy.channel.value]).as_json(),
        "reconciliation": reconciliation,
    }


def _run(session: Session, parameters: RunParameters) -> tuple[CreditRun, bool]:
    """The stored run and whether it is new; a new run is filled in the background."""
    run, created = stored_run(session, parameters)
    if created:
        enqueue_after_commit(session, tasks.catch_up)
    return run, created


def _freshness(run: CreditRun, rows: list[Row]) -> dict[str, Any]:
    pending = next(row for row in rows if row.type == PENDING)
    return {
        "credits_as_of": run.computed_at.isoformat(),
        "pending_conversions": round(sum(pending.counts.values())),
        "fit": (
            {
                "version": run.fit_version,
                "fitted_at": run.fitted_at.isoformat() if run.fitted_at else None,
                "conversions": run.fitted_conversions,
            }
            if run.model == Model.markov.value
            else None
        ),
    }


def report_csv(report: dict[str, Any], group: GroupBy) -> str:
    """One grouping of a report as CSV, with the unattributed, pending and total rows at the end."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in [*report[f"{group.value}s"], report["totals"]]:
        writer.writerow({name: "" if row[name] is None else row[name] for name in CSV_FIELDS})
    return out.getvalue()


def _parameters_for(parameters: RunParameters, group: GroupBy) -> RunParameters:
    """Data-driven models learn per channel or per campaign; rule-based credits serve both."""
    if parameters.model not in DATA_DRIVEN:
        return parameters
    level = Level.campaign if group is GroupBy.campaign else Level.channel
    return replace(parameters, level=level)


def _group_column(group: GroupBy) -> ColumnElement[Any] | InstrumentedAttribute[Any]:
    if group is GroupBy.channel:
        return Credit.channel
    return func.coalesce(Credit.campaign, NO_CAMPAIGN)


def _rows(
    session: Session, run: CreditRun, days: DateRange, group: GroupBy, recorded: Recorded
) -> list[Row]:
    begin, finish = days.instants
    key = _group_column(group).label("key")
    in_range = and_(
        Credit.run_id == run.id, Credit.converted_at >= begin, Credit.converted_at < finish
    )
    rows: dict[str, Row] = {}

    def row(name: str) -> Row:
        if name not in rows:
            kind = group.value if name != NO_CAMPAIGN else "no_campaign"
            rows[name] = Row(kind, name, channel=name if group is GroupBy.channel else None)
        return rows[name]

    first_for_group = (
        Credit.first_for_channel if group is GroupBy.channel else Credit.first_for_campaign
    )
    credited = session.execute(
        select(
            key,
            Credit.kind,
            func.sum(Credit.credit_fen),
            func.sum(Credit.share),
            func.sum(case((Credit.position == 0, Credit.value_fen), else_=0)),
            func.sum(case((first_for_group, Credit.value_fen), else_=0)),
        )
        .where(in_range)
        .group_by(key, Credit.kind)
    )
    for name, kind, fen, share, sourced, influenced in credited:
        target = row(name)
        target.counts[COUNTED[ConversionKind(kind)]] += float(share or 0)
        if kind == ConversionKind.opportunity.value:
            target.pipeline += int(fen or 0)
            target.sourced_pipeline = int(sourced or 0)
            target.influenced_pipeline = int(influenced or 0)
        elif kind == ConversionKind.won.value:
            target.revenue += int(fen or 0)

    for name, fen in _costs(session, days, group):
        row(name).cost += fen
    if group is GroupBy.campaign:
        described = session.execute(
            select(Campaign.key, Campaign.name, Campaign.channel).where(Campaign.key.in_(rows))
        )
        for name, title, channel in described:
            rows[name].name, rows[name].channel = title, channel

    ordered = sorted(rows.values(), key=lambda r: (r.type != group.value, -r.revenue, r.key))
    return [*ordered, *_unattributed_and_pending(session, run, days, recorded)]


def _costs(session: Session, days: DateRange, group: GroupBy) -> list[tuple[str, int]]:
    key = Campaign.key if group is GroupBy.campaign else CampaignCost.channel
    query = (
        select(key, func.sum(CampaignCost.amount_fen))
        .join(Campaign, Campaign.id == CampaignCost.campaign_id)
        .where(CampaignCost.day >= days.start, CampaignCost.day <= days.end)
        .group_by(key)
    )
    return [(name, int(fen)) for name, fen in session.execute(query)]


# Per conversion kind: how many conversions, and their value in fen.
Recorded = dict[str, tuple[int, int]]


def _recorded(session: Session, days: DateRange) -> Recorded:
    """The conversions recorded in the range, as recorded (not as credited)."""
    begin, finish = days.instants
    rows = session.execute(
        select(Conversion.kind, func.count(), func.coalesce(func.sum(Conversion.value_fen), 0))
        .where(Conversion.occurred_at >= begin, Conversion.occurred_at < finish)
        .group_by(Conversion.kind)
    )
    return {kind: (int(count), int(fen)) for kind, count, fen in rows}


def _unattributed_and_pending(
    session: Session, run: CreditRun, days: DateRange, recorded: Recorded
) -> tuple[Row, Row]:
    """What no touch received (conversions without touches in the window, and any fen left),
    and what the run has not credited yet (recorded minus credited)."""
    begin, finish = days.instants
    totals = session.execute(
        select(
            RunConversion.kind,
            func.count(),
            func.sum(RunConversion.value_fen),
            func.sum(case((RunConversion.touches == 0, 1), else_=0)),
            func.sum(RunConversion.unattributed_fen),
        )
        .where(
            RunConversion.run_id == run.id,
            RunConversion.converted_at >= begin,
            RunConversion.converted_at < finish,
        )
        .group_by(RunConversion.kind)
    )
    remainder = Row(UNATTRIBUTED, UNATTRIBUTED)
    credited: Recorded = {}
    for kind, count, value, untouched, unattributed in totals:
        credited[kind] = (int(count), int(value or 0))
        remainder.counts[COUNTED[ConversionKind(kind)]] = float(untouched or 0)
        _add_value(remainder, kind, int(unattributed or 0))
    pending = Row(PENDING, PENDING)
    for kind, (count, value) in recorded.items():
        credited_count, credited_value = credited.get(kind, (0, 0))
        pending.counts[COUNTED[ConversionKind(kind)]] = float(count - credited_count)
        _add_value(pending, kind, value - credited_value)
    return remainder, pending


def _add_value(row: Row, kind: str, fen: int) -> None:
    if kind == ConversionKind.opportunity.value:
        row.pipeline += fen
    elif kind == ConversionKind.won.value:
        row.revenue += fen


def _total(rows: list[Row]) -> Row:
    total = Row(TOTAL, TOTAL)
    for row in rows:
        total.cost += row.cost
        total.pipeline += row.pipeline
        total.revenue += row.revenue
        for name, value in row.counts.items():
            total.counts[name] += value
    return total


def _reconciliation(
    session: Session, days: DateRange, tables: dict[str, list[Row]], recorded: Recorded
) -> dict[str, Any]:
    """Every grouping checked against the conversions and costs as recorded, not as credited."""
    won = recorded.get(ConversionKind.won.value, (0, 0))[1]
    pipeline = recorded.get(ConversionKind.opportunity.value, (0, 0))[1]
    imported = int(
        session.scalar(
            select(func.coalesce(func.sum(CampaignCost.amount_fen), 0)).where(
                CampaignCost.day >= days.start, CampaignCost.day <= days.end
            )
        )
        or 0
    )
    result: dict[str, Any] = {
        "won_revenue": yuan(won),
        "opportunity_pipeline": yuan(pipeline),
        "imported_costs": yuan(imported),
    }
    for group, rows in tables.items():
        attributed = sum(row.revenue for row in rows if row.type not in (UNATTRIBUTED, PENDING))
        unattributed = sum(row.revenue for row in rows if row.type == UNATTRIBUTED)
        pending = sum(row.revenue for row in rows if row.type == PENDING)
        reported_pipeline = sum(row.pipeline for row in rows)
        reported_costs = sum(row.cost for row in rows)
        result[f"{group}s"] = {
            "attributed_revenue": yuan(attributed),
            "unattributed_revenue": yuan(unattributed),
            "pending_revenue": yuan(pending),
            "revenue_reconciles": attributed + unattributed + pending == won,
            "pipeline_reconciles": reported_pipeline == pipeline,
            "reported_costs": yuan(reported_costs),
            "costs_reconcile": reported_costs == imported,
        }
    return result


@dataclass(frozen=True)
class DrillDown:
    group: GroupBy
    key: str
    kind: ConversionKind | None = None
    limit: int = 50
    offset: int = 0


def drill_down(
    session: Session, days: DateRange, parameters: RunParameters, target: DrillDown
) -> dict[str, Any]:
    """The conversions (deals) behind one row's figures, each with its whole path and the
    credit this row took from it, and the cost lines behind the row's cost."""
    run, _ = _run(session, _parameters_for(parameters, target.group))
    begin, finish = days.instants
    if target.key == PENDING:
        conversions = select(Conversion.id.label("id"), Conversion.occurred_at.label("at")).where(
            Conversion.occurred_at >= begin,
            Conversion.occurred_at < finish,
            ~exists().where(
                RunConversion.run_id == run.id, RunConversion.conversion_id == Conversion.id
            ),
        )
        if target.kind is not None:
            conversions = conversions.where(Conversion.kind == target.kind.value)
    else:
        conversions = select(
            RunConversion.conversion_id.label("id"), RunConversion.converted_at.label("at")
        ).where(
            RunConversion.run_id == run.id,
            RunConversion.converted_at >= begin,
            RunConversion.converted_at < finish,
        )
        if target.kind is not None:
            conversions = conversions.where(RunConversion.kind == target.kind.value)
        if target.key == UNATTRIBUTED:
            # Untouched leads and MQLs are worth nothing but are counted in this row.
            conversions = conversions.where(
                or_(RunConversion.unattributed_fen > 0, RunConversion.touches == 0)
            )
        else:
            matching = select(Credit.conversion_id).where(
                Credit.run_id == run.id, _group_column(target.group) == target.key
            )
            conversions = conversions.where(RunConversion.conversion_id.in_(matching))
    listed = conversions.subquery()
    total = session.scalar(select(func.count()).select_from(listed)) or 0
    page = list(
        session.scalars(
            select(listed.c.id)
            .order_by(listed.c.at, listed.c.id)
            .limit(target.limit)
            .offset(target.offset)
        )
    )
    deals = {
        row.id: row for row in session.scalars(select(Conversion).where(Conversion.id.in_(page)))
    }
    summaries = {
        row.conversion_id: row
        for row in session.scalars(
            select(RunConversion).where(
                RunConversion.run_id == run.id, RunConversion.conversion_id.in_(page)
            )
        )
    }
    touches: dict[int, list[dict[str, Any]]] = defaultdict(list)
    credited: dict[int, int] = defaultdict(int)
    credit_rows = session.scalars(
        select(Credit)
        .where(Credit.run_id == run.id, Credit.conversion_id.in_(page))
        .order_by(Credit.conversion_id, Credit.position)
    )
    for credit in credit_rows:
        in_row = target.key not in (UNATTRIBUTED, PENDING) and (
            _key_of(credit, target.group) == target.key
        )
        if in_row:
            credited[credit.conversion_id] += credit.credit_fen
        touches[credit.conversion_id].append(
            {
                "position": credit.position,
                "at": credit.touched_at.isoformat(),
                "channel": credit.channel,
                "campaign": credit.campaign,
                "source": credit.touch_source,
                "ref": credit.touch_ref,
                "credit": yuan(credit.credit_fen),
                "share": round(credit.share, 6),
                "in_row": in_row,
            }
        )
    items = []
    for conversion_id in page:
        deal = deals[conversion_id]
        if target.key == PENDING:
            row_fen = deal.value_fen
        elif target.key == UNATTRIBUTED:
            row_fen = summaries[conversion_id].unattributed_fen
        else:
            row_fen = credited[conversion_id]
        items.append(
            {
                "conversion_id": conversion_id,
                "contact_id": str(deal.contact_id),
                "kind": deal.kind,
                "ref": deal.external_ref,
                "occurred_at": deal.occurred_at.isoformat(),
                "value": yuan(deal.value_fen),
                "credited_to_row": yuan(row_fen),
                "touches": touches[conversion_id],
            }
        )
    return {
        "group": target.group.value,
        "key": target.key,
        "kind": target.kind.value if target.kind else None,
        "run": run.id,
        "total": total,
        "conversions": items,
        "costs": _cost_lines(session, days, target),
    }


def _key_of(credit: Credit, group: GroupBy) -> str:
    if group is GroupBy.channel:
        return credit.channel
    return credit.campaign or NO_CAMPAIGN


def _cost_lines(session: Session, days: DateRange, target: DrillDown) -> list[dict[str, Any]]:
    if target.key in (UNATTRIBUTED, PENDING, NO_CAMPAIGN):
        return []
    column = Campaign.key if target.group is GroupBy.campaign else CampaignCost.channel
    query = (
        select(Campaign.key, CampaignCost.channel, CampaignCost.day, CampaignCost.amount_fen)
        .join(Campaign, Campaign.id == CampaignCost.campaign_id)
        .where(column == target.key, CampaignCost.day >= days.start, CampaignCost.day <= days.end)
        .order_by(CampaignCost.day, Campaign.key, CampaignCost.channel)
    )
    return [
        {"campaign": campaign, "channel": channel, "date": day.isoformat(), "amount": yuan(fen)}
        for campaign, channel, day, fen in session.execute(query)
    ]
