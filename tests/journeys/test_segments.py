"""Segments: membership follows the change feed, full rebuilds catch relative dates, every
entry and exit is kept and published, static lists import from CSV."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update

from capture.models import Contact
from core import feed
from core.clock import clock
from core.db import session_scope
from journeys import segments
from journeys.models import Segment, SegmentChange, SegmentMember
from tests.conftest import Backend
from tests.journeys.conftest import T0, dispatch, make_contact, make_event, publish

PRO = {"field": "traits.plan", "op": "eq", "value": "pro"}


def members(segment_id: uuid.UUID) -> set[uuid.UUID]:
    with session_scope() as session:
        return set(
            session.scalars(
                select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment_id)
            )
        )


def changes(segment_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(SegmentChange.contact_id, SegmentChange.change)
            .where(SegmentChange.segment_id == segment_id)
            .order_by(SegmentChange.id)
        )
        return [(r.contact_id, r.change) for r in rows]


def feed_moves() -> list[tuple[str, uuid.UUID, str]]:
    with session_scope() as session:
        rows = session.scalars(
            select(feed.ChangeRecord)
            .where(feed.ChangeRecord.kind.in_([segments.SEGMENT_ENTERED, segments.SEGMENT_LEFT]))
            .order_by(feed.ChangeRecord.id)
        )
        return [(r.kind, r.contact_id, r.payload["segment_id"]) for r in rows]


def set_traits(contact_id: uuid.UUID, traits: dict[str, object]) -> None:
    with session_scope() as session:
        session.execute(update(Contact).where(Contact.id == contact_id).values(traits=traits))
    publish(feed.TRAITS_CHANGED, contact_id, {"changed": list(traits)})


def create(condition: dict[str, object] | None, kind: str = "dynamic") -> uuid.UUID:
    with session_scope() as session:
        return segments.create_segment(session, "test", kind, condition).id


def test_dynamic_membership_follows_the_change_feed(backend: Backend) -> None:
    clock.freeze(T0)
    pro = make_contact({"plan": "pro"})
    free = make_contact({"plan": "free"})
    segment_id = create(PRO)
    assert members(segment_id) == {pro}

    clock.advance(timedelta(minutes=5))
    set_traits(free, {"plan": "pro"})
    set_traits(pro, {"plan": "free"})
    dispatch()

    assert members(segment_id) == {free}
    assert changes(segment_id) == [(pro, "entered"), (free, "entered"), (pro, "left")]
    sid = str(segment_id)
    assert feed_moves() == [
        ("segment_entered", pro, sid),
        ("segment_entered", free, sid),
        ("segment_left", pro, sid),
    ]
    with session_scope() as session:
        entered_at = session.scalar(
            select(SegmentMember.entered_at).where(SegmentMember.contact_id == free)
        )
    assert entered_at == T0 + timedelta(minutes=5)


def test_unchanged_contacts_are_not_touched_and_nothing_repeats(backend: Backend) -> None:
    clock.freeze(T0)
    pro = make_contact({"plan": "pro"})
    segment_id = create(PRO)
    publish(feed.TRAITS_CHANGED, pro, {})
    dispatch()
    dispatch()
    assert changes(segment_id) == [(pro, "entered")]


def test_behaviour_segment_reacts_to_events_and_rebuild_catches_passing_time(
    backend: Backend,
) -> None:
    clock.freeze(T0)
    visitor = make_contact()
    segment_id = create({"event": "Pricing Viewed", "within_days": 7})
    assert members(segment_id) == set()

    make_event(visitor, "Pricing Viewed")
    publish("event_stored", visitor, {"event_id": 1, "type": "track", "name": "Pricing Viewed"})
    dispatch()
    assert members(segment_id) == {visitor}

    clock.advance(timedelta(days=8))
    with session_scope() as session:
        assert segments.rebuild_all(session) == 1
    assert members(segment_id) == set()
    assert changes(segment_id) == [(visitor, "entered"), (visitor, "left")]


def test_segment_of_segments_follows_in_one_dispatch(backend: Backend) -> None:
    clock.freeze(T0)
    contact = make_contact({"plan": "free"}, email="x@example.com", email_consent="granted")
    pro_id = create(PRO)
    reachable_pro = create({"and": [{"in_segment": str(pro_id)}, {"reachable": "email"}]})
    set_traits(contact, {"plan": "pro"})
    dispatch()
    assert members(pro_id) == {contact}
    assert members(reachable_pro) == {contact}


def test_merged_contact_leaves_and_deleted_contact_history_is_erased(backend: Backend) -> None:
    clock.freeze(T0)
    winner = make_contact({"plan": "pro"})
    loser = make_contact({"plan": "pro"})
    segment_id = create(PRO)
    with session_scope() as session:
        session.execute(update(Contact).where(Contact.id == loser).values(merged_into_id=winner))
    publish(feed.CONTACT_MERGED, winner, {"merged_contact_id": str(loser)})
    dispatch()
    assert members(segment_id) == {winner}
    assert (loser, "left") in changes(segment_id)

    with session_scope() as session:
        session.execute(update(Contact).where(Contact.id == loser).values(merged_into_id=None))
        session.execute(Contact.__table__.delete().where(Contact.id.in_([winner, loser])))
    publish("contact_deleted", winner, {"merged_contact_ids": [str(loser)]})
    dispatch()
    assert members(segment_id) == set()
    assert changes(segment_id) == []


def test_static_list_import_reports_unmatched_lines(backend: Backend) -> None:
    clock.freeze(T0)
    alice = make_contact(email="alice@example.com")
    bob = make_contact(phone="+8613800138000")
    carol = make_contact(user_id="u-3")
    segment_id = create(None, kind="static")
    csv_text = (
        "Email,phone,user_id,name\n"
        "ALICE@example.com,,,Alice\n"
        ",13800138000,,Bob\n"
        ",,u-3,Carol\n"
        "nobody@example.com,,,Nobody\n"
        "not-an-email,,,Broken\n"
        ",,,\n"
        ",,,Empty\n"
        "alice@example.com,,,Again\n"
    )
    with session_scope() as session:
        report = segments.import_members(session, segment_id, csv_text)
    assert members(segment_id) == {alice, bob, carol}
    assert (report.lines, report.matched, report.added) == (7, 4, 3)
    assert report.unmatched == [
        {"line": 5, "value": "nobody@example.com", "reason": "no contact with this email"},
        {"line": 6, "reason": "not a valid email: not-an-email"},
        {"line": 8, "reason": "no email, phone or user_id on this line"},
    ]
    with session_scope() as session:
        again = segments.import_members(session, segment_id, "email\nalice@example.com\n")
        removed = segments.remove_members(session, segment_id, [bob])
    assert (again.matched, again.added, removed) == (1, 0, [bob])
    assert changes(segment_id)[-1] == (bob, "left")


def test_static_segment_is_never_rebuilt(backend: Backend) -> None:
    clock.freeze(T0)
    contact = make_contact({"plan": "pro"})
    static_id = create(None, kind="static")
    with session_scope() as session:
        segments.add_members(session, static_id, [contact])
        assert session.get(Segment, static_id) is not None
        segments.rebuild_all(session)
    publish(feed.TRAITS_CHANGED, contact, {})
    dispatch()
    assert members(static_id) == {contact}
