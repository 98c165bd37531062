"""The predictive model's features as of a cutoff time, and the words that explain them.

Nothing at or after the cutoff is read: behaviour counts only events before it, and traits
(which arrive when a person identifies) count only for contacts known before it. Outcome
events, stages and scores are never features, so the label cannot leak in.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from capture.models import Company, Contact, Event
from scoring.engine import plenty_of_work_memory
from scoring.rules import FREE_EMAIL_DOMAINS
from scoring.sql import epoch_seconds

LOOKBACK_DAYS = 90
CHUNK = 5000


@dataclass(frozen=True)
class Count:
    name: str
    days: int
    condition: ColumnElement[bool]
    words: str  # how a rep reads it, with {n} and {days}


def _page(prefix: str | None = None) -> ColumnElement[bool]:
    if prefix is None:
        return Event.type == "page"
    return and_(Event.type == "page", Event.path.startswith(prefix))


def _track(name: str) -> ColumnElement[bool]:
    return and_(Event.type == "track", Event.name == name)


COUNTS = (
    Count("page_views_7d", 7, _page(), "viewed {n} pages in the last {days} days"),
    Count("page_views_30d", 30, _page(), "viewed {n} pages in the last {days} days"),
    Count("pricing_views_7d", 7, _page("/pricing"), "visited pricing {n} times this week"),
    Count("pricing_views_90d", 90, _page("/pricing"), "visited pricing {n} times in {days} days"),
    Count(
        "case_study_views_90d", 90, _page("/case-studies"), "read {n} case studies in {days} days"
    ),
    Count("docs_views_90d", 90, _page("/docs"), "read the docs {n} times in {days} days"),
    Count("forms_90d", 90, _track("form_submitted"), "submitted {n} forms in {days} days"),
    Count(
        "whitepapers_90d",
        90,
        _track("whitepaper_downloaded"),
        "downloaded {n} whitepapers in {days} days",
    ),
    Count("email_opens_30d", 30, _track("email_opened"), "opened {n} emails in {days} days"),
    Count("email_clicks_30d", 30, _track("email_clicked"), "clicked {n} emails in {days} days"),
    Count("email_clicks_90d", 90, _track("email_clicked"), "clicked {n} emails in {days} days"),
    Count(
        "unsubscribes_90d", 90, _track("email_unsubscribed"), "unsubscribed in the last {days} days"
    ),
)
NUMERIC = (
    *[c.name for c in COUNTS],
    "days_since_last_activity",
    "days_since_first_seen",
    "log_company_size",
    "company_size_known",
)
CATEGORICAL = ("title_group", "industry", "province", "email_kind", "first_channel")
FEATURES = (*NUMERIC, *CATEGORICAL)
TITLE_GROUPS = (
    ("executive", ("CEO", "CTO", "CIO", "CFO", "COO", "VP", "总经理", "总裁", "董事")),
    ("director", ("总监", "Director", "Head")),
    ("manager", ("经理", "Manager", "主管")),
    ("student", ("学生", "实习", "Student", "Intern")),
)


@dataclass
class FeatureFrame:
    """One row per contact: `values` is an object array in FEATURES order; `readable` holds,
    column by column, the plain values behind them that explanations quote."""

    contact_ids: list[uuid.UUID]
    values: np.ndarray
    readable: dict[str, Any]

    def take(self, rows: list[int]) -> FeatureFrame:
        return FeatureFrame(
            [self.contact_ids[i] for i in rows],
            self.values[rows],
            {name: [column[i] for i in rows] for name, column in self.readable.items()},
        )


def title_group(title: str | None) -> str:
    if not title:
        return "unknown"
    for group, words in TITLE_GROUPS:
        if any(word.lower() in title.lower() for word in words):
            return group
    return "individual"


def email_kind(email: str | None) -> str:
    if not email or "@" not in email:
        return "unknown"
    return "free" if email.rsplit("@", 1)[1].lower() in FREE_EMAIL_DOMAINS else "company"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def first_identified(session: Session) -> dict[uuid.UUID, datetime]:
    """When each contact first identified itself (its first identify call)."""
    return dict(
        session.execute(
            select(Event.contact_id, func.min(Event.timestamp))
            .where(Event.type == "identify")
            .group_by(Event.contact_id)
        ).all()
    )


def build(
    session: Session,
    cutoff: datetime,
    contact_ids: Collection[uuid.UUID] | None = None,
    known_since: dict[uuid.UUID, datetime] | None = None,
) -> FeatureFrame:
    """Features as of `cutoff` for contacts first seen before it (all, or `contact_ids`).

    `known_since` gives when each contact identified; without it a contact's current known
    state is used, which is right only when the cutoff is now."""
    since = cutoff - timedelta(days=LOOKBACK_DAYS)
    window = and_(Event.timestamp < cutoff, Event.timestamp >= since)

    def within(days: int) -> ColumnElement[bool]:
        return Event.timestamp >= cutoff - timedelta(days=days)

    counts = select(
        Event.contact_id,
        *[func.sum(case((and_(c.condition, within(c.days)), 1), else_=0)) for c in COUNTS],
        epoch_seconds(func.max(Event.timestamp)),
    ).where(window)
    profiles = (
        select(
            Contact.id,
            epoch_seconds(Contact.first_seen_at),
            Contact.first_touch_channel,
            Contact.email,
            Contact.is_known,
            Contact.traits["title"].as_string(),
            Company.traits["industry"].as_string(),
            Company.traits["employees"].as_string(),
            Company.traits["province"].as_string(),
        )
        .outerjoin(Company, Company.id == Contact.company_id)
        .where(Contact.merged_into_id.is_(None), Contact.first_seen_at < cutoff)
    )
    # Plain Core rows: this runs over every contact, and ORM row handling would double it.
    plenty_of_work_memory(session)
    connection = session.connection()
    behaviour: dict[uuid.UUID, Any] = {}
    rows: list[Any] = []
    if contact_ids is None:
        grouped = connection.execute(counts.group_by(Event.contact_id)).all()
        behaviour = {row[0]: row for row in grouped}
        rows = list(connection.execute(profiles).all())
    else:
        ids = list(contact_ids)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            query = counts.where(Event.contact_id.in_(chunk)).group_by(Event.contact_id)
            behaviour.update({row[0]: row for row in connection.execute(query).all()})
            rows.extend(connection.execute(profiles.where(Contact.id.in_(chunk))).all())
    known_before = (
        None if known_since is None else {c for c, at in known_since.items() if at < cutoff}
    )
    return assemble(rows, behaviour, cutoff.timestamp(), known_before)


def assemble(
    rows: list[Any],
    behaviour: dict[uuid.UUID, Any],
    cutoff: float,
    known_before: set[uuid.UUID] | None,
) -> FeatureFrame:
    n = len(rows)
    ids = [row[0] for row in rows]
    known = [bool(row[4]) if known_before is None else row[0] in known_before for row in rows]
    empty = (None, *([0] * len(COUNTS)), None)
    stats = np.array([behaviour.get(cid, empty)[1:-1] for cid in ids], dtype=float)
    stats = stats.reshape(n, len(COUNTS))
    last = np.array([behaviour.get(cid, empty)[-1] or np.nan for cid in ids], dtype=float)
    idle = np.minimum(LOOKBACK_DAYS, np.nan_to_num((cutoff - last) / 86400, nan=LOOKBACK_DAYS))
    seen = np.maximum(0.0, (cutoff - np.array([row[1] for row in rows], dtype=float)) / 86400)
    sizes = np.array(
        [(_number(row[7]) if k else None) or np.nan for row, k in zip(rows, known, strict=True)],
        dtype=float,
    )
    has_size = ~np.isnan(sizes)
    titles = [row[5] if k else None for row, k in zip(rows, known, strict=True)]
    readable: dict[str, Any] = {c.name: stats[:, i] for i, c in enumerate(COUNTS)}
    readable.update(
        days_since_last_activity=idle,
        days_since_first_seen=seen,
        company_size=sizes,
        title=titles,
        title_group=[title_group(t) for t in titles],
        industry=[(row[6] if k else None) or "unknown" for row, k in zip(rows, known, strict=True)],
        province=[(row[8] if k else None) or "unknown" for row, k in zip(rows, known, strict=True)],
        email_kind=[
            email_kind(row[3]) if k else "unknown" for row, k in zip(rows, known, strict=True)
        ],
        first_channel=[row[2] or "unknown" for row in rows],
    )
    values = np.empty((n, len(FEATURES)), dtype=object)
    values[:, : len(COUNTS)] = np.log1p(stats)
    values[:, len(COUNTS)] = idle
    values[:, len(COUNTS) + 1] = np.log1p(seen)
    values[:, len(COUNTS) + 2] = np.where(has_size, np.log1p(np.nan_to_num(sizes)), 0.0)
    values[:, len(COUNTS) + 3] = has_size.astype(float)
    for offset, name in enumerate(CATEGORICAL):
        values[:, len(NUMERIC) + offset] = readable[name]
    return FeatureFrame(ids, values, readable)


SIZE_BANDS = ((1, 49), (50, 199), (200, 499), (500, 999), (1000, 4999))
CHANNEL_WORDS = {
    "paid_search": "paid search",
    "organic_search": "organic search",
    "paid_social": "paid social ads",
    "organic_social": "social media",
    "email": "an email",
    "sms": "an SMS",
    "referral": "a referral",
    "direct": "a direct visit",
}


def size_band(employees: float) -> str:
    for low, high in SIZE_BANDS:
        if employees <= high:
            return f"{low}–{high}"
    return "5000+"


def describe(feature: str, readable: dict[str, Any], row: int) -> str | None:
    """A rep's words for one feature of one contact, or None when it says nothing."""
    value: Any = readable.get(feature)
    for count in COUNTS:
        if count.name == feature:
            n = int(value[row])
            return count.words.format(n=n, days=count.days) if n else None
    if feature == "days_since_last_activity":
        days = float(value[row])
        return "active today" if days < 1 else f"last active {days:.0f} days ago"
    if feature == "days_since_first_seen":
        return f"first seen {float(value[row]):.0f} days ago"
    if feature in ("log_company_size", "company_size_known"):
        size = float(readable["company_size"][row])
        return f"company size {size_band(size)}" if not math.isnan(size) else None
    if feature == "title_group":
        title = readable["title"][row]
        return f"job title {title}" if title else None
    if feature in ("industry", "province"):
        text = value[row]
        if text == "unknown":
            return None
        return f"industry {text}" if feature == "industry" else f"based in {text}"
    if feature == "email_kind":
        kinds = {"company": "uses a company email", "free": "uses a free email address"}
        return kinds.get(value[row])
    if feature == "first_channel":
        channel = value[row]
        return f"first came from {CHANNEL_WORDS.get(channel, channel)}"
    return None
