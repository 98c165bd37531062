"""Campaign costs: validated lines from the API or a CSV file, stored all or nothing, one row
per campaign, channel and day so that importing the same file again changes nothing."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from attribution.db_models import Campaign, CampaignCost
from attribution.money import CURRENCIES, parse_yuan
from capture.enrichment import CHANNELS
from core.clock import clock
from core.db import dialect_insert
from core.ids import new_id
from core.models import table_of, utcnow
from core.settings import get_settings

EARLIEST_COST_DAY = date(2000, 1, 1)
MAX_AMOUNT_FEN = 10**14  # a trillion yuan: larger is a typo, not a cost
MAX_LINES = 100_000
MAX_ERRORS_SHOWN = 20
CSV_COLUMNS = ("campaign", "channel", "date", "amount")
OPTIONAL_CSV_COLUMNS = ("currency", "name")


@dataclass(frozen=True)
class CostLine:
    campaign: str
    channel: str
    day: date
    amount_fen: int
    currency: str = "CNY"
    name: str | None = None


class CostImportError(ValueError):
    """Every problem found, keyed by where it is ('line 3: amount', or '2.amount' for JSON)."""

    def __init__(self, errors: dict[str, str]) -> None:
        shown = dict(list(errors.items())[:MAX_ERRORS_SHOWN])
        more = len(errors) - len(shown)
        summary = "; ".join(f"{where}: {message}" for where, message in shown.items())
        super().__init__(
            f"nothing was imported: {summary}" + (f" (and {more} more)" if more else "")
        )
        self.errors = shown


def today() -> date:
    return clock.now().astimezone(ZoneInfo(get_settings().default_timezone)).date()


def validate_line(fields: Mapping[str, Any]) -> tuple[CostLine | None, dict[str, str]]:
    """One cost line from loose fields (CSV text or JSON values); errors are keyed by field."""
    errors: dict[str, str] = {}
    campaign = str(fields.get("campaign") or "").strip()
    if not campaign:
        errors["campaign"] = "a campaign key (its utm_campaign) is required"
    elif len(campaign) > 200:
        errors["campaign"] = "at most 200 characters"
    channel = str(fields.get("channel") or "").strip()
    if channel not in CHANNELS:
        errors["channel"] = f"{channel!r} is not a channel; use one of: {', '.join(CHANNELS)}"
    day = _parse_day(fields.get("date"), errors)
    amount_fen = 0
    amount = fields.get("amount")
    try:
        amount_fen = parse_yuan("" if amount is None or isinstance(amount, bool) else amount)
        if amount_fen > MAX_AMOUNT_FEN:
            errors["amount"] = "the amount is implausibly large"
    except ValueError as error:
        errors["amount"] = str(error)
    currency = str(fields.get("currency") or "CNY").strip().upper()
    if currency not in CURRENCIES:
        errors["currency"] = (
            f"unknown currency {currency!r}; costs are kept in {', '.join(CURRENCIES)}"
        )
    name = str(fields.get("name") or "").strip() or None
    if name is not None and len(name) > 300:
        errors["name"] = "at most 300 characters"
    if errors or day is None:
        return None, errors
    return CostLine(campaign, channel, day, amount_fen, currency, name), {}


def _parse_day(value: Any, errors: dict[str, str]) -> date | None:
    if isinstance(value, datetime):
        value = value.date()
    if not isinstance(value, date):
        try:
            value = date.fromisoformat(str(value or "").strip())
        except ValueError:
            errors["date"] = f"{value!r} is not a date (YYYY-MM-DD)"
            return None
    latest = today() + timedelta(days=1)
    if not EARLIEST_COST_DAY <= value <= latest:
        errors["date"] = f"{value} is out of range ({EARLIEST_COST_DAY} to {latest})"
        return None
    return value


def validate_lines(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> list[CostLine]:
    """All lines or an error naming every bad one; `rows` pairs each line with where it is."""
    lines: list[CostLine] = []
    errors: dict[str, str] = {}
    seen: dict[tuple[str, str, date], str] = {}
    for where, fields in rows:
        line, line_errors = validate_line(fields)
        errors.update({f"{where}: {field}": message for field, message in line_errors.items()})
        if line is None:
            continue
        identity = (line.campaign, line.channel, line.day)
        if identity in seen:
            errors[f"{where}: date"] = f"the same campaign, channel and date as {seen[identity]}"
        seen.setdefault(identity, where)
        lines.append(line)
    if errors:
        raise CostImportError(errors)
    if not lines:
        raise CostImportError({"file": "there are no cost lines"})
    if len(lines) > MAX_LINES:
        raise CostImportError({"file": f"at most {MAX_LINES} lines per import"})
    return lines


def parse_costs_csv(text: str) -> list[CostLine]:
    """A CSV with a header naming at least campaign, channel, date and amount (currency and
    name are optional); errors name the line number as a spreadsheet shows it."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")), strict=True)
    try:
        header = [column.strip().lower() for column in next(reader, [])]
        missing = [column for column in CSV_COLUMNS if column not in header]
        if missing:
            raise CostImportError({"line 1": f"the header lacks the columns: {', '.join(missing)}"})
        unknown = [c for c in header if c not in CSV_COLUMNS + OPTIONAL_CSV_COLUMNS]
        if unknown:
            raise CostImportError({"line 1": f"unknown columns: {', '.join(unknown)}"})
        rows: list[tuple[str, Mapping[str, Any]]] = []
        for values in reader:
            if not any(value.strip() for value in values):
                continue
            where = f"line {reader.line_num}"
            if len(values) != len(header):
                raise CostImportError(
                    {where: f"expected {len(header)} fields, found {len(values)}"}
                )
            rows.append((where, dict(zip(header, values, strict=True))))
            if len(rows) > MAX_LINES:
                raise CostImportError({"file": f"at most {MAX_LINES} lines per import"})
    except csv.Error as error:
        raise CostImportError({f"line {reader.line_num}": f"malformed CSV: {error}"}) from None
    return validate_lines(rows)


def import_costs(session: Session, lines: list[CostLine]) -> int:
    """Stores the lines (replacing the same campaign, channel and day) and creates campaigns
    not seen before; returns how many lines were stored."""
    campaigns = _ensure_campaigns(session, lines)
    table = table_of(CampaignCost)
    now = utcnow()
    rows = [
        {
            "campaign_id": campaigns[line.campaign],
            "channel": line.channel,
            "day": line.day,
            "amount_fen": line.amount_fen,
            "currency": line.currency,
            "updated_at": now,
        }
        for line in lines
    ]
    for start in range(0, len(rows), 5000):
        insert = dialect_insert(session, table)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["campaign_id", "channel", "day"],
                set_={
                    "amount_fen": insert.excluded.amount_fen,
                    "currency": insert.excluded.currency,
                    "updated_at": insert.excluded.updated_at,
                },
            ),
            rows[start : start + 5000],
        )
    return len(rows)


def _ensure_campaigns(session: Session, lines: list[CostLine]) -> dict[str, Any]:
    first_of: dict[str, CostLine] = {}
    for line in lines:
        first_of.setdefault(line.campaign, line)
    now = utcnow()
    session.execute(
        dialect_insert(session, table_of(Campaign)).on_conflict_do_nothing(index_elements=["key"]),
        [
            {
                "id": new_id(),
                "key": key,
                "channel": line.channel,
                "name": line.name or key,
                "created_at": now,
                "updated_at": now,
            }
            for key, line in first_of.items()
        ],
    )
    return dict(
        session.execute(select(Campaign.key, Campaign.id).where(Campaign.key.in_(first_of))).all()
    )
