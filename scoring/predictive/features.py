"""The predictive model's features as of a cutoff time, and the words that explain them.

Nothing at or after the cutoff is read: behaviour counts only events and visits before it, and
traits (which arrive when a person identifies) count only for contacts known before it. Outcome
events, stages and scores are never features, so the label cannot leak in.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Select, and_, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from capture.enrichment import CHANNELS
from capture.models import Company, Contact, Event, Visit
from core.db import is_postgres, plenty_of_work_memory
from scoring.rules import FREE_EMAIL_DOMAINS
from scoring.sql import decay_factor, epoch_seconds

LOOKBACK_DAYS = 180
RECENT_HALF_LIFE_DAYS = 14.0
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


ALL = LOOKBACK_DAYS
COUNTS = (
    Count("page_views_7d", 7, _page(), "viewed {n} pages in the last {days} days"),
    Count("page_views", ALL, _page(), "viewed {n} pages in {days} days"),
    Count("pricing_views_7d", 7, _page("/pricing"), "visited pricing {n} times this week"),
    Count("pricing_views", ALL, _page("/pricing"), "visited pricing {n} times in {days} days"),
    Count("case_study_views", ALL, _page("/case-studies"), "read {n} case studies in {days} days"),
    Count("docs_views", ALL, _page("/docs"), "read the docs {n} times in {days} days"),
    Count("forms", ALL, _track("form_submitted"), "submitted {n} forms in {days} days"),
    Count(
        "whitepapers",
        ALL,
        _track("whitepaper_downloaded"),
        "downloaded {n} whitepapers in {days} days",
    ),
    Count("email_opens", ALL, _track("email_opened"), "opened {n} emails in {days} days"),
    Count("email_clicks_30d", 30, _track("email_clicked"), "clicked {n} emails in {days} days"),
    Count("email_clicks", ALL, _track("email_clicked"), "clicked {n} emails in {days} days"),
    Count(
        "unsubscribes", ALL, _track("email_unsubscribed"), "unsubscribed in the last {days} days"
    ),
    Count("bounces", ALL, _track("email_bounced"), "{n} emails to them bounced"),
)
# Capture's channels a contact's visits may come from: each is a touched-or-not feature.
VISIT_CHANNELS = tuple(
    channel for channel in CHANNELS if channel not in ("display", "affiliate", "other")
)
NUMERIC = (
    *[c.name for c in COUNTS],
    "visits",
    "recent_activity",
    "days_since_last_activity",
    "days_since_first_seen",
    "log_company_size",
    "company_size_known",
    "identified",
    *[f"came_from_{channel}" for channel in VISIT_CHANNELS],
)
CATEGORICAL = (
    "title",
    "title_group",
    "industry",
    "size_band",
    "province",
    "city",
    "email_kind",
    "first_channel",
)
FEATURES = (*NUMERIC, *CATEGORICAL)
TITLE_GROUPS = (
    ("executive", ("CEO", "CTO", "CIO", "CFO", "COO", "VP", "总经理", "总裁", "董事")),
    ("director", ("总监", "Director", "Head")),
    ("manager", ("经理", "Manager", "主管")),
    ("student", ("学生", "实习", "Student", "Intern")),
)
# The query's leading columns, before the counts and the channels touched.
_LEADING = 13


@dataclass
class FeatureFrame:
    """One row per contact: `values` is an object array in FEATURES order; `readable` holds,
    column by column, the plain values behind them that explanations quote."""

    contact_ids: list[uuid.UUID]
    values: np.ndarray
    readable: dict[str, Any]

    def take(self, rows: list[int] | np.ndarray) -> FeatureFrame:
        index = np.asarray(rows, dtype=int)
        return FeatureFrame(
            [self.contact_ids[i] for i in index],
            self.values[index],
            {name: np.asarray(column)[index] for name, column in self.readable.items()},
        )


@functools.lru_cache(maxsize=4096)
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


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) and number >= 0 else math.nan


def feature_query(cutoff: datetime, historical: bool) -> Select[Any]:
    """One row per contact first seen before `cutoff`: its behaviour before the cutoff (events
    and visits strictly earlier), its traits, and whether it had identified itself by then
    (`historical`: from its identify events; else its current state, right when cutoff is now)."""
    since = cutoff - timedelta(days=LOOKBACK_DAYS)

    def within(days: int) -> ColumnElement[bool]:
        return Event.timestamp >= cutoff - timedelta(days=days)

    behaviour = (
        select(
            Event.contact_id.label("contact_id"),
            *[func.count().filter(c.condition, within(c.days)).label(c.name) for c in COUNTS],
            func.sum(decay_factor(Event.timestamp, cutoff, RECENT_HALF_LIFE_DAYS)).label("recent"),
            epoch_seconds(func.max(Event.timestamp)).label("last_at"),
            func.count().filter(Event.type == "identify").label("identified"),
        )
        .where(Event.timestamp < cutoff, Event.timestamp >= since)
        .group_by(Event.contact_id)
        .subquery()
    )
    visits = (
        select(
            Visit.contact_id.label("contact_id"),
            func.count().label("visits"),
            *[
                func.count().filter(Visit.channel == channel).label(channel)
                for channel in VISIT_CHANNELS
            ],
        )
        .where(Visit.started_at < cutoff, Visit.started_at >= since)
        .group_by(Visit.contact_id)
        .subquery()
    )
    identified = func.coalesce(behaviour.c.identified, 0) > 0 if historical else Contact.is_known
    return (
        select(
            Contact.id,
            epoch_seconds(Contact.first_seen_at),
            Contact.first_touch_channel,
            Contact.email,
            identified,
            Contact.traits["title"].as_string(),
            Company.traits["industry"].as_string(),
            Company.traits["employees"].as_string(),
            Company.traits["province"].as_string(),
            Company.traits["city"].as_string(),
            behaviour.c.last_at,
            func.coalesce(behaviour.c.recent, 0.0),
            func.coalesce(visits.c.visits, 0),
            *[func.coalesce(behaviour.c[c.name], 0) for c in COUNTS],
            *[func.coalesce(visits.c[channel], 0) for channel in VISIT_CHANNELS],
        )
        .select_from(Contact)
        .outerjoin(Company, Company.id == Contact.company_id)
        .outerjoin(behaviour, behaviour.c.contact_id == Contact.id)
        .outerjoin(visits, visits.c.contact_id == Contact.id)
        .where(Contact.merged_into_id.is_(None), Contact.first_seen_at < cutoff)
    )


def build(
    session: Session,
    cutoff: datetime,
    contact_ids: Collection[uuid.UUID] | None = None,
    historical: bool = False,
) -> FeatureFrame:
    """Features as of `cutoff` for contacts first seen before it (all, or `contact_ids`), from
    one set-based query. `historical` reads whether a contact had identified by the cutoff from
    its events; otherwise its current state is used, which is right only when cutoff is now."""
    query = feature_query(cutoff, historical)
    plenty_of_work_memory(session)
    connection = session.connection()
    if is_postgres(session):
        # Without statistics (a fresh table) the planner may nest-loop over the aggregates,
        # re-running them for every contact; hash joins are right at any size here.
        session.execute(text("SET LOCAL enable_nestloop = off"))
    if contact_ids is None:
        rows = list(connection.execute(query).all())
    else:
        ids = list(contact_ids)
        rows = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            rows.extend(connection.execute(query.where(Contact.id.in_(chunk))).all())
    if is_postgres(session):
        session.execute(text("SET LOCAL enable_nestloop TO DEFAULT"))
    return assemble(rows, cutoff.timestamp())


def assemble(rows: list[Any], cutoff: float) -> FeatureFrame:
    """Turns the query's rows into the feature matrix, column by column in numpy."""
    n = len(rows)
    width = _LEADING + len(COUNTS) + len(VISIT_CHANNELS)
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [()] * width
    known = np.array(columns[4], dtype=bool)

    def trait(column: int) -> np.ndarray:
        values = np.array([v or "unknown" for v in columns[column]], dtype=object)
        return np.where(known, values, "unknown").astype(object)

    def numbers(column: int) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in columns[column]], dtype=float)

    counts = np.array(columns[_LEADING : _LEADING + len(COUNTS)], dtype=float)
    stats = counts.reshape(len(COUNTS), n).T
    touched = np.array(columns[_LEADING + len(COUNTS) :], dtype=float) > 0
    touched = touched.reshape(len(VISIT_CHANNELS), n).T
    recent, visits = numbers(11), numbers(12)
    idle = np.minimum(LOOKBACK_DAYS, np.nan_to_num((cutoff - numbers(10)) / 86400, nan=ALL))
    seen = np.maximum(0.0, (cutoff - numbers(1)) / 86400)
    sizes = np.array([_number(v) for v in columns[7]], dtype=float)
    sizes[~known] = np.nan
    has_size = ~np.isnan(sizes)
    titles = trait(5)
    readable: dict[str, Any] = {c.name: stats[:, i] for i, c in enumerate(COUNTS)}
    readable.update(
        visits=visits,
        recent_activity=recent,
        days_since_last_activity=idle,
        days_since_first_seen=seen,
        company_size=sizes,
        identified=known,
        title=titles,
        title_group=np.array(
            [title_group(None if t == "unknown" else t) for t in titles], dtype=object
        ),
        industry=trait(6),
        size_band=np.array(
            [size_band(s) if h else "unknown" for s, h in zip(sizes, has_size, strict=True)],
            dtype=object,
        ),
        province=trait(8),
        city=trait(9),
        email_kind=np.array(
            [email_kind(e) if k else "unknown" for e, k in zip(columns[3], known, strict=True)],
            dtype=object,
        ),
        first_channel=np.array([c or "unknown" for c in columns[2]], dtype=object),
    )
    for i, channel in enumerate(VISIT_CHANNELS):
        readable[f"came_from_{channel}"] = touched[:, i]
    numeric = np.column_stack(
        [
            np.log1p(stats),
            np.log1p(visits),
            np.log1p(recent),
            idle,
            np.log1p(seen),
            np.where(has_size, np.log1p(np.nan_to_num(sizes)), 0.0),
            has_size.astype(float),
            known.astype(float),
            touched.astype(float),
        ]
    ).reshape(n, len(NUMERIC))
    values = np.empty((n, len(FEATURES)), dtype=object)
    values[:, : len(NUMERIC)] = numeric
    for offset, name in enumerate(CATEGORICAL):
        values[:, len(NUMERIC) + offset] = readable[name]
    return FeatureFrame(list(columns[0]), values, readable)


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


COUNT_NAMED = {count.name: count for count in COUNTS}


def describe(feature: str, readable: dict[str, Any], row: int) -> str | None:
    """A rep's words for one feature of one contact, or None when it says nothing."""
    return describe_many(feature, readable, np.array([row]))[0]


def describe_many(feature: str, readable: dict[str, Any], rows: np.ndarray) -> list[str | None]:
    """A rep's words for one feature of each of `rows` (None where it says nothing)."""
    value: Any = readable.get(feature)
    count = COUNT_NAMED.get(feature)
    if count is not None:
        return [
            count.words.format(n=n, days=count.days) if n else None for n in value[rows].astype(int)
        ]
    if feature == "visits":
        return [f"came back {n - 1} times" if n > 1 else None for n in value[rows].astype(int)]
    if feature == "recent_activity":
        return ["active in the last two weeks" if x >= 1 else None for x in value[rows]]
    if feature == "days_since_last_activity":
        return [
            "active today" if days < 1 else f"last active {days:.0f} days ago"
            for days in value[rows].astype(float)
        ]
    if feature == "days_since_first_seen":
        return [f"first seen {days:.0f} days ago" for days in value[rows].astype(float)]
    if feature in ("log_company_size", "company_size_known", "size_band"):
        return [
            f"company size {size_band(size)}" if not math.isnan(size) else None
            for size in readable["company_size"][rows].astype(float)
        ]
    if feature in ("title", "title_group"):
        return [f"job title {t}" if t != "unknown" else None for t in readable["title"][rows]]
    if feature.startswith("came_from_"):
        channel = feature.removeprefix("came_from_")
        phrase = f"came from {CHANNEL_WORDS.get(channel, channel)}"
        return [phrase if touched else None for touched in value[rows]]
    if feature in ("industry", "province", "city"):
        prefix = "industry" if feature == "industry" else "based in"
        return [f"{prefix} {text}" if text != "unknown" else None for text in value[rows]]
    if feature == "email_kind":
        kinds = {"company": "uses a company email", "free": "uses a free email address"}
        return [kinds.get(kind) for kind in value[rows]]
    if feature == "first_channel":
        return [f"first came from {CHANNEL_WORDS.get(c, c)}" for c in value[rows]]
    return [None] * len(rows)
