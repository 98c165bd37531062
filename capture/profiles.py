"""The behavioural profile of each contact, folded forward by every ingest batch.

A batch is reduced in memory to one delta per contact (counts, first and last seen and touch,
identifiers, changed traits). On PostgreSQL one UPDATE … FROM json_to_recordset(…) applies
the deltas, adding and comparing inside the database, so profiles never travel to Python;
elsewhere each profile is read, combined and written back.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from capture.models import Contact
from core import feed
from core.clock import clock
from core.db import bulk_update, is_postgres
from core.models import table_of

if TYPE_CHECKING:
    from capture.parsing import Message

TouchEntry = tuple[datetime, str, str | None, str | None, str | None]
TOUCH_PARTS = ("at", "channel", "source", "medium", "campaign")
FIRST_TOUCH_KEYS = tuple(f"ft_{part}" for part in TOUCH_PARTS)
LAST_TOUCH_KEYS = tuple(f"lt_{part}" for part in TOUCH_PARTS)


@dataclass
class ProfileDelta:
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    page_views: int = 0
    event_counts: Counter[str] = field(default_factory=Counter)
    traits: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    first_touch: TouchEntry | None = None
    last_touch: TouchEntry | None = None


def collect_deltas(messages: Iterable[Message]) -> dict[uuid.UUID, ProfileDelta]:
    deltas: dict[uuid.UUID, ProfileDelta] = defaultdict(ProfileDelta)
    for m in messages:
        d = deltas[m.contact_id]
        d.first_seen = m.timestamp if d.first_seen is None else min(d.first_seen, m.timestamp)
        d.last_seen = m.timestamp if d.last_seen is None else max(d.last_seen, m.timestamp)
        if m.type == "page":
            d.page_views += 1
        elif m.type == "track" and m.name:
            d.event_counts[m.name] += 1
        if m.type == "identify":
            d.traits.update(m.traits)
            d.email = m.traits.get("email") if "email" in m.traits else d.email
            d.phone = m.traits.get("phone") if "phone" in m.traits else d.phone
        if m.user_id:
            d.user_id = m.user_id
        tz = m.context.get("timezone")
        if isinstance(tz, str) and valid_timezone(tz):
            d.timezone = tz
        touch = m.touch
        if touch is not None:
            entry = (m.timestamp, touch.channel, touch.source, touch.medium, touch.campaign)
            if d.first_touch is None or entry[0] < d.first_touch[0]:
                d.first_touch = entry
            if d.last_touch is None or entry[0] >= d.last_touch[0]:
                d.last_touch = entry
    return deltas


@lru_cache(maxsize=512)
def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def update_profiles(
    session: Session, messages: list[Message], became_known: set[uuid.UUID]
) -> None:
    """Folds the batch into each contact's profile and publishes the traits that changed."""
    fold_deltas(session, collect_deltas(messages), became_known)


def fold_deltas(
    session: Session,
    deltas: dict[uuid.UUID, ProfileDelta],
    became_known: set[uuid.UUID],
    inserted: AbstractSet[uuid.UUID] = frozenset(),
) -> None:
    """update_profiles from the batch's deltas; the `inserted` contacts were inserted with
    their whole profile (see whole_profile), so only their traits remain to be published."""
    if not deltas:
        return
    if is_postgres(session):
        _apply_in_database(session, deltas, became_known, inserted)
    else:
        _apply_in_python(session, deltas, became_known, inserted)


def whole_profile(delta: ProfileDelta, is_known: bool) -> dict[str, Any]:
    """The profile columns of a contact new in this batch, as folding its delta into an
    empty profile would leave them."""
    no_touch = (None, None, None, None, None)
    first_touch = delta.first_touch or no_touch
    last_touch = delta.last_touch or no_touch
    return {
        "is_known": is_known,
        "first_seen_at": delta.first_seen,
        "last_seen_at": delta.last_seen,
        "page_views": delta.page_views,
        "event_counts": dict(delta.event_counts),
        "traits": {k: v for k, v in delta.traits.items() if v is not None},
        "user_id": delta.user_id,
        "email": delta.email,
        "phone": delta.phone,
        "timezone": delta.timezone,
        **{f"first_touch_{p}": v for p, v in zip(TOUCH_PARTS, first_touch, strict=True)},
        **{f"last_touch_{p}": v for p, v in zip(TOUCH_PARTS, last_touch, strict=True)},
        "lifecycle_stage": "subscriber" if is_known else None,
    }


def _trait_changes(
    deltas: dict[uuid.UUID, ProfileDelta], current_traits: dict[uuid.UUID, dict[str, Any]]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The traits each delta really changes (a value equal to the stored one is no change)."""
    changes: dict[uuid.UUID, dict[str, Any]] = {}
    for contact_id, delta in deltas.items():
        if delta.traits:
            traits = current_traits.get(contact_id) or {}
            changed = {k: v for k, v in delta.traits.items() if traits.get(k) != v}
            if changed:
                changes[contact_id] = changed
    return changes


def _publish_trait_changes(
    session: Session,
    changes: dict[uuid.UUID, dict[str, Any]],
    current_traits: dict[uuid.UUID, dict[str, Any]],
) -> None:
    feed.publish(
        session,
        [
            feed.Change(
                feed.TRAITS_CHANGED,
                contact_id,
                {
                    "changed": {
                        k: {"old": (current_traits.get(contact_id) or {}).get(k), "new": v}
                        for k, v in changed.items()
                    }
                },
            )
            for contact_id, changed in changes.items()
        ],
    )


# Every column is computed from the stored row (c) and the batch's delta (d): sums add,
# first/last pick the earlier/later, identifiers take the batch's newest when it has one.
_FOLD_DELTAS = """
UPDATE contacts c SET
  page_views = COALESCE(c.page_views, 0) + d.page_views,
  event_counts = CASE WHEN d.event_counts IS NULL THEN c.event_counts
    ELSE COALESCE(c.event_counts, '{}'::jsonb) || (
      SELECT jsonb_object_agg(e.key,
        e.value::numeric + COALESCE((c.event_counts ->> e.key)::numeric, 0))
      FROM jsonb_each_text(d.event_counts) e) END,
  traits = CASE WHEN d.traits IS NULL THEN c.traits
    ELSE COALESCE(c.traits, '{}'::jsonb) || d.traits END,
  first_seen_at = LEAST(c.first_seen_at, d.first_seen),
  last_seen_at = GREATEST(c.last_seen_at, d.last_seen),
  FIRST_TOUCH,
  LAST_TOUCH,
  user_id = COALESCE(d.user_id, c.user_id),
  email = COALESCE(d.email, c.email),
  phone = COALESCE(d.phone, c.phone),
  timezone = COALESCE(d.timezone, c.timezone),
  is_known = c.is_known OR d.became_known,
  lifecycle_stage = COALESCE(
    c.lifecycle_stage, CASE WHEN c.is_known OR d.became_known THEN 'subscriber' END),
  updated_at = CAST(:now AS timestamptz)
FROM json_to_recordset(CAST(:deltas AS json)) AS d(
  id uuid, page_views int, first_seen timestamptz, last_seen timestamptz,
  event_counts jsonb, traits jsonb, user_id text, email text, phone text, timezone text,
  ft_at timestamptz, ft_channel text, ft_source text, ft_medium text, ft_campaign text,
  lt_at timestamptz, lt_channel text, lt_source text, lt_medium text, lt_campaign text,
  became_known boolean)
WHERE c.id = d.id
"""


def _touch_assignments(prefix: str, alias: str, newer_wins: bool) -> str:
    replace = (
        f"d.{alias}_at IS NOT NULL AND (c.{prefix}_at IS NULL OR "
        f"d.{alias}_at {'>=' if newer_wins else '<'} c.{prefix}_at)"
    )
    return ",\n  ".join(
        f"{prefix}_{part} = CASE WHEN {replace} THEN d.{alias}_{part} ELSE c.{prefix}_{part} END"
        for part in TOUCH_PARTS
    )


FOLD_DELTAS = text(
    _FOLD_DELTAS.replace(
        "FIRST_TOUCH", _touch_assignments("first_touch", "ft", newer_wins=False)
    ).replace("LAST_TOUCH", _touch_assignments("last_touch", "lt", newer_wins=True))
)


def _apply_in_database(
    session: Session,
    deltas: dict[uuid.UUID, ProfileDelta],
    became_known: set[uuid.UUID],
    inserted: AbstractSet[uuid.UUID],
) -> None:
    with_traits = [
        contact_id
        for contact_id, delta in deltas.items()
        if delta.traits and contact_id not in inserted
    ]
    current_traits: dict[uuid.UUID, dict[str, Any]] = {}
    if with_traits:
        current_traits = dict(
            session.execute(
                text("SELECT id, traits FROM contacts WHERE id = ANY(:ids)"), {"ids": with_traits}
            ).all()
        )
    changes = _trait_changes(deltas, current_traits)
    no_touch = (None, None, None, None, None)
    rows = [
        {
            "id": contact_id,
            "page_views": d.page_views,
            "first_seen": d.first_seen,
            "last_seen": d.last_seen,
            "event_counts": d.event_counts or None,
            "traits": changes.get(contact_id),
            "user_id": d.user_id,
            "email": d.email,
            "phone": d.phone,
            "timezone": d.timezone,
            **dict(zip(FIRST_TOUCH_KEYS, d.first_touch or no_touch, strict=True)),
            **dict(zip(LAST_TOUCH_KEYS, d.last_touch or no_touch, strict=True)),
            "became_known": contact_id in became_known,
        }
        for contact_id, d in deltas.items()
        if contact_id not in inserted
    ]
    if rows:
        # One JSON document rather than a list per column: psycopg adapts lists in Python.
        session.execute(FOLD_DELTAS, {"now": clock.now(), "deltas": orjson.dumps(rows).decode()})
    _publish_trait_changes(session, changes, current_traits)


PROFILE_COLUMNS = (
    Contact.id,
    Contact.traits,
    Contact.event_counts,
    Contact.page_views,
    Contact.first_seen_at,
    Contact.last_seen_at,
    Contact.first_touch_at,
    Contact.first_touch_channel,
    Contact.first_touch_source,
    Contact.first_touch_medium,
    Contact.first_touch_campaign,
    Contact.last_touch_at,
    Contact.last_touch_channel,
    Contact.last_touch_source,
    Contact.last_touch_medium,
    Contact.last_touch_campaign,
    Contact.user_id,
    Contact.email,
    Contact.phone,
    Contact.timezone,
    Contact.is_known,
    Contact.lifecycle_stage,
)


def _apply_in_python(
    session: Session,
    deltas: dict[uuid.UUID, ProfileDelta],
    became_known: set[uuid.UUID],
    inserted: AbstractSet[uuid.UUID],
) -> None:
    """One SELECT of the profiles, combined here, one executemany back."""
    current = {}
    ids = [contact_id for contact_id in deltas if contact_id not in inserted]
    for start in range(0, len(ids), 500):
        for row in session.execute(
            select(*PROFILE_COLUMNS).where(Contact.id.in_(ids[start : start + 500]))
        ):
            current[row.id] = row
    current_traits = {contact_id: row.traits for contact_id, row in current.items()}
    changes = _trait_changes(deltas, current_traits)
    now = clock.now()
    updates: list[dict[str, Any]] = []
    for contact_id, delta in deltas.items():
        if contact_id in inserted:
            continue
        row = current[contact_id]
        counts = dict(row.event_counts or {})
        for name, count in delta.event_counts.items():
            counts[name] = counts.get(name, 0) + count
        is_known = bool(row.is_known or contact_id in became_known)
        updates.append(
            {
                "id": contact_id,
                "traits": {**(row.traits or {}), **changes.get(contact_id, {})},
                "event_counts": counts,
                "page_views": (row.page_views or 0) + delta.page_views,
                "first_seen_at": _earlier(row.first_seen_at, delta.first_seen),
                "last_seen_at": _later(row.last_seen_at, delta.last_seen),
                **_touch_columns("first_touch", row, delta.first_touch, newer_wins=False),
                **_touch_columns("last_touch", row, delta.last_touch, newer_wins=True),
                "user_id": delta.user_id or row.user_id,
                "email": delta.email or row.email,
                "phone": delta.phone or row.phone,
                "timezone": delta.timezone or row.timezone,
                "is_known": is_known,
                "lifecycle_stage": row.lifecycle_stage or ("subscriber" if is_known else None),
                "updated_at": now,
            }
        )
    bulk_update(session, table_of(Contact), updates)
    _publish_trait_changes(session, changes, current_traits)


def _touch_columns(
    prefix: str, row: Any, touch: TouchEntry | None, newer_wins: bool
) -> dict[str, Any]:
    current_at = getattr(row, f"{prefix}_at")
    replace = touch is not None and (
        current_at is None or (touch[0] >= current_at if newer_wins else touch[0] < current_at)
    )
    if replace:
        assert touch is not None
        return {f"{prefix}_{part}": value for part, value in zip(TOUCH_PARTS, touch, strict=True)}
    return {f"{prefix}_{part}": getattr(row, f"{prefix}_{part}") for part in TOUCH_PARTS}


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)
