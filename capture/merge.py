"""Merging contacts: all history moves to the survivor; the merged one keeps a pointer.

Used by ingest to fold anonymous visitors into the contact they turned out to be, and by
the merge API for two known contacts. Other domains register their contact_id columns here
so their rows follow the person too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Column, case, select, update
from sqlalchemy.orm import Session

from capture.models import ConsentRecord, Contact, Event, FormSubmission, Identity, Visit
from core import feed
from core.clock import clock
from core.models import table_of

_contact_columns: list[Column[Any]] = [
    table_of(Identity).c.contact_id,
    table_of(Event).c.contact_id,
    table_of(Visit).c.contact_id,
    table_of(ConsentRecord).c.contact_id,
    table_of(FormSubmission).c.contact_id,
]

LIFECYCLE_ORDER = ["subscriber", "lead", "mql", "sql", "opportunity", "customer"]


def register_contact_reference(column: Column[Any]) -> None:
    """Lets another domain's table follow a merge (e.g. score ledger, deliveries)."""
    if column not in _contact_columns:
        _contact_columns.append(column)


def move_rows(session: Session, losers_to_winners: Mapping[uuid.UUID, uuid.UUID]) -> None:
    """Repoints every registered contact reference, one UPDATE per table for the whole map."""
    if not losers_to_winners:
        return
    for column in _contact_columns:
        session.execute(
            update(column.table)
            .where(column.in_(list(losers_to_winners)))
            .values({column.name: case(dict(losers_to_winners), value=column)})
        )


def combine_profiles(winner: Contact, loser: Contact) -> None:
    """Folds the loser's profile into the winner's; the winner's own values take priority."""
    winner.traits = {**(loser.traits or {}), **(winner.traits or {})}
    winner.tags = sorted(set(winner.tags or []) | set(loser.tags or []))
    for attr in ("user_id", "email", "phone", "company_id", "timezone"):
        if getattr(winner, attr) is None:
            setattr(winner, attr, getattr(loser, attr))
    winner.is_known = winner.is_known or loser.is_known
    winner.first_seen_at = _earliest(winner.first_seen_at, loser.first_seen_at)
    winner.last_seen_at = _latest(winner.last_seen_at, loser.last_seen_at)
    if loser.first_touch_at and (
        winner.first_touch_at is None or loser.first_touch_at < winner.first_touch_at
    ):
        _copy_touch(winner, loser, "first_touch")
    if loser.last_touch_at and (
        winner.last_touch_at is None or loser.last_touch_at > winner.last_touch_at
    ):
        _copy_touch(winner, loser, "last_touch")
    winner.page_views = (winner.page_views or 0) + (loser.page_views or 0)
    counts = dict(winner.event_counts or {})
    for name, count in (loser.event_counts or {}).items():
        counts[name] = counts.get(name, 0) + count
    winner.event_counts = counts
    winner.lifecycle_stage = _furthest_stage(winner.lifecycle_stage, loser.lifecycle_stage)
    winner.email_unsubscribed = winner.email_unsubscribed or loser.email_unsubscribed
    winner.sms_unsubscribed = winner.sms_unsubscribed or loser.sms_unsubscribed
    winner.suppressed = winner.suppressed or loser.suppressed


def merge_contacts(session: Session, into_id: uuid.UUID, from_id: uuid.UUID) -> Contact:
    """Explicit merge of two contacts (any kind). Raises ValueError naming what is wrong."""
    if into_id == from_id:
        raise ValueError("a contact cannot be merged into itself")
    contacts = {
        c.id: c
        for c in session.scalars(
            select(Contact).where(Contact.id.in_([into_id, from_id])).with_for_update()
        )
    }
    if into_id not in contacts:
        raise LookupError(f"contact {into_id} does not exist")
    if from_id not in contacts:
        raise LookupError(f"contact {from_id} does not exist")
    winner, loser = contacts[into_id], contacts[from_id]
    if winner.merged_into_id is not None or loser.merged_into_id is not None:
        raise ValueError("a contact that was already merged cannot be merged again")
    fold(session, {loser.id: winner.id}, contacts)
    refresh_consent(session, winner)
    return winner


def fold(
    session: Session,
    losers_to_winners: Mapping[uuid.UUID, uuid.UUID],
    contacts: Mapping[uuid.UUID, Contact],
) -> None:
    """Merges each loser into its winner: rows move, profiles combine, pointers are left."""
    move_rows(session, losers_to_winners)
    # Contacts merged into a loser earlier now point straight at the survivor.
    session.execute(
        update(Contact)
        .where(Contact.merged_into_id.in_(list(losers_to_winners)))
        .values(merged_into_id=case(dict(losers_to_winners), value=Contact.merged_into_id))
    )
    now = clock.now()
    for loser_id, winner_id in losers_to_winners.items():
        winner, loser = contacts[winner_id], contacts[loser_id]
        combine_profiles(winner, loser)
        loser.merged_into_id = winner_id
        loser.updated_at = now
        winner.updated_at = now
    session.flush()
    feed.publish(
        session,
        [
            feed.Change(feed.CONTACT_MERGED, winner_id, {"merged_contact_id": str(loser_id)})
            for loser_id, winner_id in losers_to_winners.items()
        ],
    )


def refresh_consent(session: Session, contact: Contact) -> None:
    """Consent per channel follows the latest recorded decision."""
    for channel in ("email", "sms"):
        latest = session.scalar(
            select(ConsentRecord.granted)
            .where(ConsentRecord.contact_id == contact.id, ConsentRecord.channel == channel)
            .order_by(ConsentRecord.recorded_at.desc(), ConsentRecord.id.desc())
            .limit(1)
        )
        if latest is not None:
            setattr(contact, f"{channel}_consent", "granted" if latest else "denied")


def _copy_touch(winner: Contact, loser: Contact, prefix: str) -> None:
    for part in ("at", "channel", "source", "medium", "campaign"):
        setattr(winner, f"{prefix}_{part}", getattr(loser, f"{prefix}_{part}"))


def _earliest(a: Any, b: Any) -> Any:
    return min(x for x in (a, b) if x is not None) if (a or b) else None


def _latest(a: Any, b: Any) -> Any:
    return max(x for x in (a, b) if x is not None) if (a or b) else None


def _furthest_stage(a: str | None, b: str | None) -> str | None:
    def rank(stage: str | None) -> int:
        return LIFECYCLE_ORDER.index(stage) if stage in LIFECYCLE_ORDER else -1

    return a if rank(a) >= rank(b) else b
