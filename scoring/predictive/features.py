"""The predictive model's features as of a cutoff time, and the words that explain them.

Nothing at or after the cutoff is read: behaviour counts only events and visits before it, and
traits (which arrive when a person identifies) count only for contacts known before it. Outcome
events, stages and scores are never features, so the label cannot leak in.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


@dataclass
class FeatureFrame:
    """One row per contact: `numeric` (floats, NUMERIC order) and `categorical` (strings,
    CATEGORICAL order) are what the model reads; `readable` holds, column by column, the plain
    values behind them that explanations quote."""

    contact_ids: list[uuid.UUID]
    numeric: np.ndarray
    categorical: np.ndarray
    readable: dict[str, Any]

    def __len__(self) -> int:
        return len(self.contact_ids)

    def take(self, rows: list[int] | np.ndarray) -> FeatureFrame:
        index = np.asarray(rows, dtype=int)
        return FeatureFrame(
            [self.contact_ids[i] for i in index],
            self.numeric[index],
            self.categorical[index],
            {name: np.asarray(column)[index] for name, column in self.readable.items()},
        )

    @staticmethod
    def concatenate(frames: list[FeatureFrame]) -> FeatureFrame:
        return FeatureFrame(
            [cid for frame in frames for cid in frame.contact_ids],
            np.concatenate([frame.numeric for frame in frames]),
            np.concatenate([frame.categorical for frame in frames]),
            {
                name: np.concatenate([frame.readable[name] for frame in frames])
                for name in frames[0].readable
            },
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


IdRange = tuple[uuid.UUID | None, uuid.UUID | None]


def id_slices(parts: int) -> list[IdRange]:
    """`parts` contiguous ranges of contact ids that cover them all (random ids spread evenly)."""
    bounds = [uuid.UUID(int=(i << 128) // parts) for i in range(1, parts)]
    return list(zip([None, *bounds], [*bounds, None], strict=True))


def _in_range(column: Any, ids: IdRange) -> list[ColumnElement[bool]]:
    low, high = ids
    return [
        *([column >= low] if low is not None else []),
        *([column < high] if high is not None else []),
    ]


def feature_query(cutoff: datetime, historical: bool, ids: IdRange = (None, None)) -> Select[Any]:
    """One row per contact first seen before `cutoff` (with an id in `ids`): its behaviour
    before the cutoff (events and visits strictly earlier), its traits, and whether it had
    identified itself by then (`historical`: from its identify events; else its current state,
    right when cutoff is now)."""
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
        .where(
            Event.timestamp < cutoff, Event.timestamp >= since, *_in_range(Event.contact_id, ids)
        )
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
        .where(
            Visit.started_at < cutoff, Visit.started_at >= since, *_in_range(Visit.contact_id, ids)
        )
        .group_by(Visit.contact_id)
        .subquery()
    )
    identified = func.coalesce(behaviour.c.identified, 0) > 0 if historical else Contact.is_known
    return (
        select(
            Contact.id.label("contact_id"),
            epoch_seconds(Contact.first_seen_at).label("first_seen_at"),
            Contact.first_touch_channel.label("first_channel"),
            Contact.email.label("email"),
            identified.label("identified"),
            Contact.traits["title"].as_string().label("title"),
            Company.traits["industry"].as_string().label("industry"),
            Company.traits["employees"].as_string().label("employees"),
            Company.traits["province"].as_string().label("province"),
            Company.traits["city"].as_string().label("city"),
            behaviour.c.last_at.label("last_at"),
            func.coalesce(behaviour.c.recent, 0.0).label("recent_activity"),
            func.coalesce(visits.c.visits, 0).label("visits"),
            *[func.coalesce(behaviour.c[c.name], 0).label(c.name) for c in COUNTS],
            *[
                func.coalesce(visits.c[channel], 0).label(f"came_from_{channel}")
                for channel in VISIT_CHANNELS
            ],
        )
        .select_from(Contact)
        .outerjoin(Company, Company.id == Contact.company_id)
        .outerjoin(behaviour, behaviour.c.contact_id == Contact.id)
        .outerjoin(visits, visits.c.contact_id == Contact.id)
        .where(
            Contact.merged_into_id.is_(None),
            Contact.first_seen_at < cutoff,
            *_in_range(Contact.id, ids),
        )
    )


def build(
    session: Session,
    cutoff: datetime,
    contact_ids: Collection[uuid.UUID] | None = None,
    historical: bool = False,
    ids: IdRange = (None, None),
) -> FeatureFrame:
    """Features as of `cutoff` for contacts first seen before it (all, those in the `ids`
    range, or `contact_ids`), from one set-based query. `historical` reads whether a contact
    had identified by the cutoff from its events; otherwise its current state is used, which is
    right only when cutoff is now."""
    query = feature_query(cutoff, historical, ids)
    plenty_of_work_memory(session)
    postgres = is_postgres(session)
    if postgres:
        # Without statistics (a fresh table) the planner may nest-loop over the aggregates,
        # re-running them for every contact; hash joins are right at any size here.
        session.execute(text("SET LOCAL enable_nestloop = off"))
    if contact_ids is None:
        columns = fetch_columns(session, query)
    else:
        wanted = list(contact_ids)
        chunks = [
            fetch_columns(session, query.where(Contact.id.in_(wanted[start : start + CHUNK])))
            for start in range(0, len(wanted), CHUNK)
        ]
        columns = {name: [v for chunk in chunks for v in chunk[name]] for name in query_names()}
    if postgres:
        session.execute(text("SET LOCAL enable_nestloop TO DEFAULT"))
    return assemble(columns, cutoff.timestamp())


@functools.cache
def query_names() -> tuple[str, ...]:
    return tuple(feature_query(datetime.now(UTC), False).selected_columns.keys())


def fetch_columns(session: Session, query: Select[Any]) -> dict[str, list[Any]]:
    """The query's result column by column. PostgreSQL sends each column as one array (one row
    in all), which the driver decodes in C: far cheaper than 100,000 rows of 40 values."""
    names = query_names()
    if is_postgres(session):
        rows = query.subquery()
        arrays = session.execute(select(*[func.array_agg(rows.c[name]) for name in names])).one()
        return {name: list(values or ()) for name, values in zip(names, arrays, strict=True)}
    result = session.execute(query).all()
    transposed = list(zip(*result, strict=True)) if result else [()] * len(names)
    return {name: list(values) for name, values in zip(names, transposed, strict=True)}


def assemble(columns: dict[str, list[Any]], cutoff: float) -> FeatureFrame:
    """Turns the query's columns into the feature matrices, column by column in numpy. A
    contact's traits count only once it is known (identified)."""
    n = len(columns["contact_id"])
    known = np.array(columns["identified"], dtype=bool)

    def numbers(name: str) -> np.ndarray:
        return np.array(columns[name], dtype=float).reshape(n)  # None becomes NaN

    def trait(name: str) -> np.ndarray:
        values = np.array([v or "unknown" for v in columns[name]], dtype=object).reshape(n)
        values[~known] = "unknown"
        return values

    stats = np.column_stack([numbers(c.name) for c in COUNTS]).reshape(n, len(COUNTS))
    touched = np.column_stack(
        [numbers(f"came_from_{channel}") > 0 for channel in VISIT_CHANNELS]
    ).reshape(n, len(VISIT_CHANNELS))
    recent, visits = numbers("recent_activity"), numbers("visits")
    idle = np.minimum(LOOKBACK_DAYS, np.nan_to_num((cutoff - numbers("last_at")) / 86400, nan=ALL))
    seen = np.maximum(0.0, (cutoff - numbers("first_seen_at")) / 86400)
    employees = np.array(columns["employees"], dtype=object).reshape(n)
    sizes = np.array(
        [
            _number(v) if v is not None and k else math.nan
            for v, k in zip(employees, known, strict=True)
        ],
        dtype=float,
    ).reshape(n)
    has_size = ~np.isnan(sizes)
    titles = trait("title")
    emails = np.array(columns["email"], dtype=object).reshape(n)
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
        ).reshape(n),
        industry=trait("industry"),
        size_band=size_bands(sizes),
        province=trait("province"),
        city=trait("city"),
        email_kind=np.array(
            [email_kind(e) if k else "unknown" for e, k in zip(emails, known, strict=True)],
            dtype=object,
        ).reshape(n),
        first_channel=np.array(
            [c or "unknown" for c in columns["first_channel"]], dtype=object
        ).reshape(n),
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
    categorical = np.empty((n, len(CATEGORICAL)), dtype=object)
    for offset, name in enumerate(CATEGORICAL):
        categorical[:, offset] = readable[name]
    return FeatureFrame(list(columns["contact_id"]), numeric, categorical, readable)


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


SIZE_BAND_NAMES = (*(f"{low}–{high}" for low, high in SIZE_BANDS), "5000+")


def size_band(employees: float) -> str:
    for (_, high), name in zip(SIZE_BANDS, SIZE_BAND_NAMES, strict=False):
        if employees <= high:
            return name
    return SIZE_BAND_NAMES[-1]


def size_bands(sizes: np.ndarray) -> np.ndarray:
    """`size_band` of each size, "unknown" where it is NaN."""
    highs = np.array([high for _, high in SIZE_BANDS], dtype=float)
    names = np.array([*SIZE_BAND_NAMES, "unknown"], dtype=object)
    band = np.searchsorted(highs, np.nan_to_num(sizes, nan=0.0), side="left")
    return names[np.where(np.isnan(sizes), len(names) - 1, band)]


COUNT_NAMED = {count.name: count for count in COUNTS}
SIZE_FEATURES = ("log_company_size", "company_size_known", "size_band")
TITLE_FEATURES = ("title", "title_group")
EMAIL_KINDS = {"company": "uses a company email", "free": "uses a free email address"}


def phrase_group(feature: str) -> str:
    """Features that explain themselves in the same words share a group (a contact's size
    features all say "company size …"), so a reason is never given twice."""
    if feature in SIZE_FEATURES:
        return "company_size"
    if feature in TITLE_FEATURES:
        return "title"
    return feature


def describe(feature: str, readable: dict[str, Any], row: int) -> str | None:
    """A rep's words for one feature of one contact, or None when it says nothing."""
    return describe_many(feature, readable, np.array([row]))[0]


def describe_many(feature: str, readable: dict[str, Any], rows: np.ndarray) -> list[str | None]:
    """A rep's words for one feature of each of `rows` (None where it says nothing), worded once
    per distinct value."""
    value: Any = readable.get(feature)
    count = COUNT_NAMED.get(feature)
    if count is not None:
        return _worded(
            value[rows].astype(int),
            lambda n: count.words.format(n=n, days=count.days) if n else None,
        )
    if feature == "visits":
        return _worded(
            value[rows].astype(int), lambda n: f"came back {n - 1} times" if n > 1 else None
        )
    if feature == "recent_activity":
        return _worded(
            value[rows] >= 1, lambda active: "active in the last two weeks" if active else None
        )
    if feature == "days_since_last_activity":
        days = value[rows].astype(float)
        return _worded(
            np.where(days < 1, -1.0, np.round(days)),
            lambda d: "active today" if d < 0 else f"last active {d:.0f} days ago",
        )
    if feature == "days_since_first_seen":
        return _worded(
            np.round(value[rows].astype(float)), lambda d: f"first seen {d:.0f} days ago"
        )
    if feature in SIZE_FEATURES:
        return _worded(
            size_bands(readable["company_size"][rows].astype(float)),
            lambda band: f"company size {band}" if band != "unknown" else None,
        )
    if feature in TITLE_FEATURES:
        return _worded(
            readable["title"][rows], lambda t: f"job title {t}" if t != "unknown" else None
        )
    if feature.startswith("came_from_"):
        channel = feature.removeprefix("came_from_")
        phrase = f"came from {CHANNEL_WORDS.get(channel, channel)}"
        return _worded(value[rows].astype(bool), lambda touched: phrase if touched else None)
    if feature in ("industry", "province", "city"):
        prefix = "industry" if feature == "industry" else "based in"
        return _worded(value[rows], lambda t: f"{prefix} {t}" if t != "unknown" else None)
    if feature == "email_kind":
        return _worded(value[rows], EMAIL_KINDS.get)
    if feature == "first_channel":
        return _worded(value[rows], lambda c: f"first came from {CHANNEL_WORDS.get(c, c)}")
    return [None] * len(rows)


def _worded(values: np.ndarray, words: Callable[[Any], str | None]) -> list[str | None]:
    """`words` of each value, called once per distinct value."""
    if len(values) == 0:
        return []
    distinct, inverse = np.unique(values, return_inverse=True)
    said = [words(v) for v in distinct.tolist()]
    return [said[i] for i in inverse.ravel().tolist()]
