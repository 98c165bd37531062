"""Request and response shapes of the attribution API."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel, Field


class CostIn(BaseModel):
    campaign: str = Field(max_length=200, description="the campaign's utm_campaign")
    channel: str = Field(max_length=32, description="a channel name, e.g. paid_search")
    date: date
    amount: Decimal | str = Field(description="yuan, at most 2 decimals, not negative")
    currency: str = Field(default="CNY", max_length=3)
    name: str | None = Field(default=None, max_length=300, description="campaign name if new")


class CostsIn(BaseModel):
    costs: list[CostIn] = Field(min_length=1, max_length=100_000)


class ImportResult(BaseModel):
    imported: int = Field(description="lines stored; a line for a known day replaced it")


class CostRead(BaseModel):
    campaign: str
    channel: str
    date: date
    amount: str
    currency: str


class CampaignRead(BaseModel):
    key: str
    channel: str
    name: str
