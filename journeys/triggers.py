"""Entry triggers of published journeys: which journeys a batch of changes starts, and for
whom. Live triggers are held in memory, indexed by event name (or, for triggers on a call
type alone such as page views, which have no name, by call type), by segment entered or
left and by trait, and rebuilt when a journey is published, paused or archived; a batch
then costs a dictionary look-up or two per change, and one read of the candidate events
(and contacts) with a column per property filter (and condition) that fired, however many
journeys there are."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from sqlalchemy import ColumnElement, and_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from capture.models import Contact, Event
from core import feed
from core.clock import clock
from core.db import is_postgres
from journeys import engine
from journeys.conditions import Compiler, FieldTest, Node, parse, parse_event_filters
from journeys.models import Journey, JourneyTrigger, JourneyVersion
from journeys.segments import SEGMENT_ENTERED, SEGMENT_LEFT

EVENT = "event"
# Segment triggers and the segment changes that start them.
SEGMENT_MOVES = {"segment_entry": SEGMENT_ENTERED, "segment_exit": SEGMENT_LEFT}
TRAIT_CHANGE = "trait_change"
ROWS_PER_STATEMENT = 1000


@dataclass(frozen=True)
class EventTrigger:
    journey_id: uuid.UUID
    call: str | None
    where: tuple[FieldTest, ...]


@dataclass(frozen=True)
class TraitTrigger:
    journey_id: uuid.UUID
    condition: Node | None


@dataclass
class TriggerIndex:
    """The live triggers; `fingerprint` names the journey versions it was built from."""

    fingerprint: tuple[tuple[uuid.UUID, uuid.UUID | None], ...] = ()
    by_event: dict[str, list[EventTrigger]] = field(default_factory=dict)
    by_call: dict[str, list[EventTrigger]] = field(default_factory=dict)
    # Keyed by the segment change (entered or left) and the segment.
    by_segment: dict[tuple[str, uuid.UUID], list[uuid.UUID]] = field(default_factory=dict)
    by_trait: dict[str, list[TraitTrigger]] = field(default_factory=dict)


_index = TriggerIndex()


def live_index(session: Session) -> TriggerIndex:
    """The index of published journeys' triggers, rebuilt only when the set of live versions
    differs from the one it was built from (one small query per batch tells)."""
    global _index
    rows = session.execute(
        select(JourneyTrigger.journey_id, Journey.live_version_id)
        .join(Journey, Journey.id == JourneyTrigger.journey_id)
        .where(Journey.status == "published")
        .order_by(JourneyTrigger.journey_id)
    ).all()
    fingerprint = tuple((journey_id, version_id) for journey_id, version_id in rows)
    if fingerprint != _index.fingerprint:
        _index = build_index(session, fingerprint)
    return _index


def build_index(
    session: Session, fingerprint: tuple[tuple[uuid.UUID, uuid.UUID | None], ...]
) -> TriggerIndex:
    index = TriggerIndex(fingerprint)
    version_ids = [version_id for _, version_id in fingerprint if version_id is not None]
    definitions = session.execute(
        select(JourneyVersion.journey_id, JourneyVersion.definition).where(
            JourneyVersion.id.in_(version_ids)
        )
    )
    for journey_id, definition in definitions:
        trigger = definition["trigger"]
        if trigger["type"] == EVENT:
            where = parse_event_filters(trigger.get("where", []), "trigger.where")
            event_trigger = EventTrigger(journey_id, trigger.get("call"), where)
            if trigger.get("event") is not None:
                index.by_event.setdefault(trigger["event"], []).append(event_trigger)
            else:
                index.by_call.setdefault(trigger["call"], []).append(event_trigger)
        elif trigger["type"] in SEGMENT_MOVES:
            key = (SEGMENT_MOVES[trigger["type"]], uuid.UUID(trigger["segment_id"]))
            index.by_segment.setdefault(key, []).append(journey_id)
        elif trigger["type"] == TRAIT_CHANGE:
            condition = trigger.get("condition")
            parsed = None if condition is None else parse(condition, "trigger.condition")
            index.by_trait.setdefault(trigger["trait"], []).append(TraitTrigger(journey_id, parsed))
    return index


def changed_traits(payload: dict[str, Any]) -> Iterable[str]:
    """Trait names a `traits_changed` record names (a mapping of old and new, or a list)."""
    changed = payload.get("changed") or ()
    return changed.keys() if isinstance(changed, dict) else changed


@dataclass
class Matches:
    """What one batch starts: contacts per journey, and the candidates still to be tested
    in SQL (events against property filters, contacts against conditions)."""

    contacts: dict[uuid.UUID, set[uuid.UUID]] = field(default_factory=dict)
    events: dict[EventTrigger, list[int]] = field(default_factory=dict)
    traits: dict[TraitTrigger, set[uuid.UUID]] = field(default_factory=dict)

    def add(self, journey_id: uuid.UUID, contact_id: uuid.UUID) -> None:
        self.contacts.setdefault(journey_id, set()).add(contact_id)


def start_journeys(session: Session, records: Sequence[feed.ChangeRecord]) -> None:
    """Enrolls the contacts whose events, segment entries and trait changes in this batch
    meet a published journey's entry trigger."""
    index = live_index(session)
    if not index.fingerprint:
        return
    found = Matches()
    for record in records:
        if record.kind == feed.EVENT_STORED:
            payload = record.payload
            for event_trigger in chain(
                index.by_event.get(payload.get("name") or "", ()),
                index.by_call.get(payload.get("type") or "", ()),
            ):
                found.events.setdefault(event_trigger, []).append(int(payload["event_id"]))
        elif record.kind in (SEGMENT_ENTERED, SEGMENT_LEFT):
            key = (record.kind, uuid.UUID(record.payload["segment_id"]))
            for journey_id in index.by_segment.get(key, ()):
                found.add(journey_id, record.contact_id)
        elif record.kind == feed.TRAITS_CHANGED:
            for trait in changed_traits(record.payload):
                for trait_trigger in index.by_trait.get(trait, ()):
                    if trait_trigger.condition is None:
                        found.add(trait_trigger.journey_id, record.contact_id)
                    else:
                        found.traits.setdefault(trait_trigger, set()).add(record.contact_id)
    for journey_id, contact_id in _tested(session, found):
        found.add(journey_id, contact_id)
    for journey_id in sorted(found.contacts):
        journey = session.get(Journey, journey_id)
        if journey is not None:
            engine.enroll(session, journey, found.contacts[journey_id])


def _tested(session: Session, found: Matches) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(journey, contact) pairs passing their trigger's SQL test. Each candidate row is read
    once, with one boolean column per trigger, so the statement stays one small scan
    whatever the number of triggers. Events are read fresh: a contact merged since is
    followed to the one it was merged into."""
    compiler = Compiler(clock.now(), is_postgres(session))
    pairs: list[tuple[uuid.UUID, uuid.UUID]] = []
    event_triggers = list(found.events)
    wanted = [set(found.events[trigger]) for trigger in event_triggers]
    tests = [
        and_(true(), *_call_is(t.call), *compiler.event_filters(t.where)) for t in event_triggers
    ]
    for row in _rows(session, Event.id, Event.contact_id, tests, sorted(set().union(*wanted))):
        event_id, contact_id, *passed = row
        pairs += [
            (trigger.journey_id, contact_id)
            for trigger, ids, ok in zip(event_triggers, wanted, passed, strict=True)
            if ok and event_id in ids
        ]
    trait_triggers = list(found.traits)
    candidates = [found.traits[trigger] for trigger in trait_triggers]
    tests = [compiler.compile(t.condition) for t in trait_triggers if t.condition is not None]
    for row in _rows(session, Contact.id, Contact.id, tests, sorted(set().union(*candidates))):
        contact_id, _, *passed = row
        pairs += [
            (trigger.journey_id, contact_id)
            for trigger, ids, ok in zip(trait_triggers, candidates, passed, strict=True)
            if ok and contact_id in ids
        ]
    return pairs


def _call_is(call: str | None) -> list[ColumnElement[bool]]:
    return [] if call is None else [Event.type == call]


def _rows(
    session: Session,
    key: InstrumentedAttribute[Any],
    owner: InstrumentedAttribute[Any],
    tests: list[ColumnElement[bool]],
    keys: list[Any],
) -> Iterator[tuple[Any, ...]]:
    """Rows of `key`'s table for the given keys: the key, its contact, and each test."""
    columns = [test.label(f"test_{n}") for n, test in enumerate(tests)]
    for start in range(0, len(keys), ROWS_PER_STATEMENT):
        chunk = keys[start : start + ROWS_PER_STATEMENT]
        query = select(key, owner, *columns).where(key.in_(chunk))
        if key is Contact.id:
            query = query.where(Contact.merged_into_id.is_(None))
        yield from (tuple(row) for row in session.execute(query))
