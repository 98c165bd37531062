"""Attribution API under /api/v1/attribution: costs in (JSON or CSV), the ROI report out
(JSON or CSV), and the drill-down behind every figure. Finance and marketers only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select

from api.deps import RequireRole, SessionDep
from api.errors import ApiError
from attribution import costs
from attribution.credits import RunParameters
from attribution.db_models import Campaign, CampaignCost, ConversionKind
from attribution.models import Model
from attribution.money import yuan
from attribution.report import DateRange, DrillDown, GroupBy, drill_down, report_csv, roi_report
from attribution.schemas import CampaignRead, CostRead, CostsIn, ImportResult
from core.keys import ApiKey, Role

router = APIRouter(prefix="/api/v1/attribution", tags=["attribution"])

FinanceKey = Annotated[ApiKey, Depends(RequireRole(Role.finance, Role.marketer))]
MAX_CSV_BYTES = 10 * 1024 * 1024


def date_range(start: date, end: date) -> DateRange:
    try:
        return DateRange(start, end)
    except ValueError as error:
        raise ApiError(422, "invalid", str(error), {"end": str(error)}) from None


def run_parameters(
    model: Annotated[Model, Query(description="the attribution model")] = Model.linear,
    lookback_days: Annotated[int, Query(ge=1, le=3650)] = 90,
    half_life_days: Annotated[float, Query(gt=0, le=3650, description="time decay")] = 7.0,
    order: Annotated[int, Query(ge=1, le=4, description="Markov chain order")] = 1,
) -> RunParameters:
    return RunParameters(
        model, lookback_days=lookback_days, half_life_days=half_life_days, order=order
    )


Days = Annotated[DateRange, Depends(date_range)]
Parameters = Annotated[RunParameters, Depends(run_parameters)]


@router.get("/report")
def get_report(
    session: SessionDep, _key: FinanceKey, days: Days, parameters: Parameters
) -> dict[str, Any]:
    """ROI per campaign and per channel for the days from `start` to `end` (inclusive, in the
    service's time zone) under one model. Money in yuan as exact decimal strings. The
    `(unattributed)` row holds what no touch in the lookback window earned and the `(pending)`
    row the conversions not credited yet by the background, so attributed plus unattributed
    plus pending revenue is the won revenue; `reconciliation` checks it, and the costs.
    Credits are read as stored, never computed here; `freshness` says as of when (and, for
    Markov, which fit)."""
    return roi_report(session, days, parameters)


@router.get("/report.csv")
def get_report_csv(
    session: SessionDep,
    _key: FinanceKey,
    days: Days,
    parameters: Parameters,
    by: GroupBy = GroupBy.campaign,
) -> Response:
    """The same report as CSV, one grouping (`by`), ending with the unattributed, pending and
    total rows."""
    body = report_csv(roi_report(session, days, parameters), by)
    filename = f"roi-{by.value}-{parameters.model.value}-{days.start}-{days.end}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/drilldown")
def get_drilldown(
    session: SessionDep,
    _key: FinanceKey,
    days: Days,
    parameters: Parameters,
    by: GroupBy,
    key: Annotated[str, Query(min_length=1, max_length=200, description="a row's key")],
    kind: ConversionKind | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The conversions behind one row of the report (optionally one kind), each with its whole
    path, the credit of every touch and what this row took; and the row's cost lines."""
    return drill_down(session, days, parameters, DrillDown(by, key, kind, limit, offset))


@router.post("/costs")
def post_costs(body: CostsIn, session: SessionDep, _key: FinanceKey) -> ImportResult:
    """Stores cost lines, all or none; a line for a campaign, channel and day already known
    replaces it, so sending the same lines again changes nothing."""
    rows = [(f"costs.{i}", line.model_dump()) for i, line in enumerate(body.costs)]
    return ImportResult(imported=_import(session, lambda: costs.validate_lines(rows)))


@router.post(
    "/costs/import",
    openapi_extra={
        "requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}
    },
)
async def import_costs_csv(request: Request, session: SessionDep, _key: FinanceKey) -> ImportResult:
    """Imports a CSV file sent as the body (`Content-Type: text/csv`), UTF-8, with a header
    `campaign,channel,date,amount` and optionally `currency` and `name`. Amounts are yuan.
    Any bad line rejects the whole file, and the error names every bad line."""
    raw = await request.body()
    if len(raw) > MAX_CSV_BYTES:
        raise ApiError(413, "too_large", f"a cost file is at most {MAX_CSV_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            422, "invalid", "the file is not UTF-8 text", {"file": "not UTF-8"}
        ) from None
    return ImportResult(imported=_import(session, lambda: costs.parse_costs_csv(text)))


def _import(session: SessionDep, parse: Callable[[], list[costs.CostLine]]) -> int:
    try:
        lines = parse()
    except costs.CostImportError as error:
        raise ApiError(422, "invalid", str(error), error.errors) from None
    return costs.import_costs(session, lines)


@router.get("/costs")
def list_costs(
    session: SessionDep,
    _key: FinanceKey,
    days: Days,
    campaign: Annotated[str | None, Query(max_length=200)] = None,
    channel: Annotated[str | None, Query(max_length=32)] = None,
) -> list[CostRead]:
    """Cost lines between `start` and `end`, by day."""
    query = (
        select(Campaign.key, CampaignCost)
        .join(Campaign, Campaign.id == CampaignCost.campaign_id)
        .where(CampaignCost.day >= days.start, CampaignCost.day <= days.end)
        .order_by(CampaignCost.day, Campaign.key, CampaignCost.channel)
    )
    if campaign is not None:
        query = query.where(Campaign.key == campaign)
    if channel is not None:
        query = query.where(CampaignCost.channel == channel)
    return [
        CostRead(
            campaign=key,
            channel=cost.channel,
            date=cost.day,
            amount=yuan(cost.amount_fen),
            currency=cost.currency,
        )
        for key, cost in session.execute(query)
    ]


@router.get("/campaigns")
def list_campaigns(session: SessionDep, _key: FinanceKey) -> list[CampaignRead]:
    rows = session.scalars(select(Campaign).order_by(Campaign.key))
    return [CampaignRead(key=row.key, channel=row.channel, name=row.name) for row in rows]
