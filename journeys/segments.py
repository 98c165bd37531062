"""Segments: dynamic audiences kept up to date in SQL from the change feed, static lists
imported from CSV, and the history of who entered and left (also published on the feed)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, exists, func, literal, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.identity import normalize_email, normalize_phone
from capture.models import Contact
from core import feed
from core.clock import clock
from core.db import bulk_insert, dialect_insert, is_postgres, plenty_of_work_memory
from core.models import table_of
from journeys.conditions import Compiler, ConditionError, Node, parse, segment_ids
from journeys.models import DYNAMIC, STATIC, Segment, SegmentChange, SegmentMember
from scoring import scorer

SEGMENT_ENTERED = "segment_entered"
SEGMENT_LEFT = "segment_left"
FEED_CONSUMER = "journeys.segments"
IMPORT_COLUMNS = ("email", "phone", "user_id")
MAX_IMPORT_LINES = 100_000
LOOKUP_BATCH = 1000


def invalid(fields: dict[str, str]) -> ApiError:
    message = "invalid segment: " + "; ".join(f"{k} {v}" for k, v in fields.items())
    return ApiError(422, "invalid", message, fields)


def not_found(segment_id: object) -> ApiError:
    return ApiError(404, "not_found", f"segment {segment_id} does not exist")


def check_condition(session: Session, tree: Any, path: str = "condition") -> Node:
    """Parses a condition and checks that the segments it refers to exist."""
    try:
        node = parse(tree, path)
    except ConditionError as error:
        raise invalid({error.path: error.message}) from None
    wanted = segment_ids(node)
    if wanted:
        known = set(session.scalars(select(Segment.id).where(Segment.id.in_(wanted))))
        missing = sorted(wanted - known, key=str)
        if missing:
            raise invalid({path: f"refers to segment {missing[0]}, which does not exist"})
    return node


def compiler(session: Session, bulk: bool = False) -> Compiler:
    """`bulk` for queries over every contact, which also get room to hash in memory."""
    if bulk:
        plenty_of_work_memory(session)
    return Compiler(clock.now(), is_postgres(session), bulk=bulk)


def get_segment(session: Session, segment_id: uuid.UUID) -> Segment:
    segment = session.get(Segment, segment_id)
    if segment is None:
        raise not_found(segment_id)
    return segment


def list_segments(session: Session) -> list[Segment]:
    return list(session.scalars(select(Segment).order_by(Segment.created_at, Segment.id)))


def member_count(session: Session, segment_id: uuid.UUID) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(SegmentMember)
            .where(SegmentMember.segment_id == segment_id)
        )
        or 0
    )


def create_segment(
    session: Session, name: str, kind: str, condition: dict[str, Any] | None
) -> Segment:
    """A dynamic segment is filled from its condition at once; a static one starts empty."""
    if kind == DYNAMIC:
        if condition is None:
            raise invalid({"condition": "is required for a dynamic segment"})
        check_condition(session, condition)
    elif condition is not None:
        raise invalid({"condition": "a static segment has no condition; import its members"})
    segment = Segment(name=name, kind=kind, condition=condition)
    session.add(segment)
    session.flush()
    if kind == DYNAMIC:
        refresh(session, segment)
    return segment


def delete_segment(session: Session, segment_id: uuid.UUID) -> None:
    segment = get_segment(session, segment_id)
    for other in list_segments(session):
        if other.condition and segment_id in segment_ids(parse(other.condition)):
            raise ApiError(
                409, "in_use", f"segment {other.id} ({other.name}) refers to this segment"
            )
    session.delete(segment)
    session.flush()


def preview(session: Session, tree: Any, sample_size: int) -> tuple[int, list[Contact]]:
    """How many contacts meet a condition now, and a few of them, without storing anything."""
    members = compiler(session, bulk=True).members(check_condition(session, tree)).subquery()
    count = session.scalar(select(func.count()).select_from(members)) or 0
    sample = session.scalars(
        select(Contact)
        .where(Contact.id.in_(select(members.c.id)))
        .order_by(Contact.id)
        .limit(sample_size)
    )
    return count, list(sample)


@dataclass
class Refresh:
    entered: list[uuid.UUID] = field(default_factory=list)
    left: list[uuid.UUID] = field(default_factory=list)


def refresh(
    session: Session, segment: Segment, contact_ids: Sequence[uuid.UUID] | None = None
) -> Refresh:
    """Brings a dynamic segment's members in line with its condition: for the given contacts,
    or for everyone (a full rebuild). Two statements, whatever the number of contacts."""
    assert segment.condition is not None
    members = compiler(session, bulk=contact_ids is None).members(parse(segment.condition))
    if contact_ids is not None:
        members = members.where(Contact.id.in_(contact_ids))
    now = clock.now()
    # Leavers first: on a new segment there is nobody to check.
    leaving = delete(SegmentMember).where(
        SegmentMember.segment_id == segment.id,
        ~exists(members.where(Contact.id == SegmentMember.contact_id)),
    )
    if contact_ids is not None:
        leaving = leaving.where(SegmentMember.contact_id.in_(contact_ids))
    left = session.scalars(leaving.returning(SegmentMember.contact_id)).all()
    newcomers = members.where(
        ~exists().where(
            SegmentMember.segment_id == segment.id, SegmentMember.contact_id == Contact.id
        )
    ).with_only_columns(
        literal(segment.id), Contact.id, literal(now, type_=SegmentMember.entered_at.type)
    )
    entered = session.scalars(
        dialect_insert(session, SegmentMember)
        .from_select(["segment_id", "contact_id", "entered_at"], newcomers)
        .on_conflict_do_nothing()
        .returning(SegmentMember.contact_id)
    ).all()
    if contact_ids is None:
        segment.rebuilt_at = now
    result = Refresh(list(entered), list(left))
    record_changes(session, segment.id, result)
    return result


def record_changes(session: Session, segment_id: uuid.UUID, changes: Refresh) -> None:
    """Keeps the history and tells the change feed, so journeys can react to entries."""
    now = clock.now()
    moves = [(SEGMENT_ENTERED, "entered", c) for c in changes.entered] + [
        (SEGMENT_LEFT, "left", c) for c in changes.left
    ]
    bulk_insert(
        session,
        table_of(SegmentChange),
        [
            {"segment_id": segment_id, "contact_id": c, "change": change, "at": now}
            for _, change, c in moves
        ],
    )
    feed.publish(
        session,
        (feed.Change(kind, c, {"segment_id": str(segment_id)}) for kind, _, c in moves),
    )
    session.flush()


def refresh_contacts(session: Session, contact_ids: Iterable[uuid.UUID]) -> int:
    """Re-evaluates every dynamic segment for contacts that changed; returns how many
    memberships moved. Older segments go first, since newer ones may refer to them."""
    ids = sorted(set(contact_ids))
    if not ids:
        return 0
    moved = 0
    dynamic = select(Segment).where(Segment.kind == DYNAMIC).order_by(Segment.created_at)
    for segment in session.scalars(dynamic).all():
        for start in range(0, len(ids), LOOKUP_BATCH):
            result = refresh(session, segment, ids[start : start + LOOKUP_BATCH])
            moved += len(result.entered) + len(result.left)
    return moved


def rebuild_all(session: Session) -> int:
    """A full rebuild of every dynamic segment: relative dates move even when nobody acts."""
    moved = 0
    dynamic = select(Segment).where(Segment.kind == DYNAMIC).order_by(Segment.created_at)
    for segment in session.scalars(dynamic).all():
        result = refresh(session, segment)
        moved += len(result.entered) + len(result.left)
    return moved


def handle_changes(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    changed: set[uuid.UUID] = set()
    deleted: set[uuid.UUID] = set()
    for record in records:
        if record.kind == "contact_deleted":
            deleted.add(record.contact_id)
            deleted.update(uuid.UUID(i) for i in record.payload.get("merged_contact_ids", []))
            continue
        changed.add(record.contact_id)
        if record.kind == feed.CONTACT_MERGED:
            changed.add(uuid.UUID(record.payload["merged_contact_id"]))
    if deleted:
        # Erasure: the history of a deleted person goes with them.
        session.execute(delete(SegmentChange).where(SegmentChange.contact_id.in_(deleted)))
    refresh_contacts(session, changed - deleted)


def subscribe() -> None:
    # After scoring has handled a change, so that score, grade and stage conditions see the
    # scores that change made.
    feed.subscribe(FEED_CONSUMER, handle_changes, after=[scorer.FEED_CONSUMER])


@dataclass
class ImportReport:
    lines: int = 0
    matched: int = 0
    added: int = 0
    unmatched: list[dict[str, Any]] = field(default_factory=list)


def import_members(session: Session, segment_id: uuid.UUID, text: str) -> ImportReport:
    """Adds the contacts named in a CSV (a header row with `email`, `phone` or `user_id`)
    to a static segment; lines naming nobody are reported with the reason."""
    segment = get_segment(session, segment_id)
    if segment.kind != STATIC:
        raise invalid({"segment": "only a static segment takes imported members"})
    rows = csv.reader(io.StringIO(text))
    header = [name.strip().lower() for name in next(rows, [])]
    columns = [name for name in header if name in IMPORT_COLUMNS]
    if not columns:
        raise invalid({"csv": f"the header row must name one of: {', '.join(IMPORT_COLUMNS)}"})
    report = ImportReport()
    wanted: dict[tuple[str, str], list[int]] = {}
    for line_number, row in enumerate(rows, start=2):
        if report.lines >= MAX_IMPORT_LINES:
            raise invalid({"csv": f"at most {MAX_IMPORT_LINES} lines per import"})
        if not any(cell.strip() for cell in row):
            continue
        report.lines += 1
        key = _identifier(dict(zip(header, row, strict=False)), columns)
        if isinstance(key, str):
            report.unmatched.append({"line": line_number, "reason": key})
        else:
            wanted.setdefault(key, []).append(line_number)
    found = _find_contacts(session, list(wanted))
    for key, line_numbers in wanted.items():
        if key not in found:
            report.unmatched.extend(
                {"line": n, "value": key[1], "reason": f"no contact with this {key[0]}"}
                for n in line_numbers
            )
    report.unmatched.sort(key=lambda item: item["line"])
    matched = {found[key] for key in wanted if key in found}
    report.matched = sum(len(wanted[key]) for key in wanted if key in found)
    report.added = len(add_members(session, segment.id, matched))
    return report


def _identifier(row: dict[str, str], columns: list[str]) -> tuple[str, str] | str:
    """The first usable identifier on a line, or why there is none."""
    for column in columns:
        raw = (row.get(column) or "").strip()
        if not raw:
            continue
        if column == "email":
            value = normalize_email(raw)
        elif column == "phone":
            value = normalize_phone(raw)
        else:
            value = raw
        if value is None:
            return f"not a valid {column}: {raw[:100]}"
        return column, value
    return "no email, phone or user_id on this line"


def _find_contacts(
    session: Session, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], uuid.UUID]:
    found: dict[tuple[str, str], uuid.UUID] = {}
    for column in IMPORT_COLUMNS:
        values = [value for kind, value in keys if kind == column]
        attribute = getattr(Contact, column)
        for start in range(0, len(values), LOOKUP_BATCH):
            rows = session.execute(
                select(attribute, Contact.id).where(
                    attribute.in_(values[start : start + LOOKUP_BATCH]),
                    Contact.merged_into_id.is_(None),
                )
            )
            found.update(((column, value), contact_id) for value, contact_id in rows)
    return found


def add_members(
    session: Session, segment_id: uuid.UUID, contact_ids: Iterable[uuid.UUID]
) -> list[uuid.UUID]:
    """Puts contacts into a static segment; returns those who were not in it already."""
    rows = [
        {"segment_id": segment_id, "contact_id": c, "entered_at": clock.now()}
        for c in sorted(set(contact_ids))
    ]
    if not rows:
        return []
    entered = list(
        session.scalars(
            dialect_insert(session, SegmentMember)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(SegmentMember.contact_id)
        )
    )
    record_changes(session, segment_id, Refresh(entered=entered))
    return entered


def remove_members(
    session: Session, segment_id: uuid.UUID, contact_ids: Iterable[uuid.UUID]
) -> list[uuid.UUID]:
    left = list(
        session.scalars(
            delete(SegmentMember)
            .where(
                SegmentMember.segment_id == segment_id,
                SegmentMember.contact_id.in_(set(contact_ids)),
            )
            .returning(SegmentMember.contact_id)
        )
    )
    record_changes(session, segment_id, Refresh(left=left))
    return left


def members_page(
    session: Session, segment_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[Any]:
    get_segment(session, segment_id)
    query = (
        select(SegmentMember.contact_id, SegmentMember.entered_at, Contact.email, Contact.user_id)
        .join(Contact, Contact.id == SegmentMember.contact_id)
        .where(SegmentMember.segment_id == segment_id)
        .order_by(SegmentMember.contact_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(SegmentMember.contact_id > after)
    return list(session.execute(query))


def history_page(
    session: Session, segment_id: uuid.UUID, after: int | None, limit: int
) -> list[SegmentChange]:
    get_segment(session, segment_id)
    query = (
        select(SegmentChange)
        .where(SegmentChange.segment_id == segment_id)
        .order_by(SegmentChange.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(SegmentChange.id > after)
    return list(session.scalars(query))
