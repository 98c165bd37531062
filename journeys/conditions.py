"""The condition language shared by segments, triggers, branches and goals: a JSON tree,
validated with errors that name the offending path, compiled to one SQL query over contacts.

A tree is one of:
- `{"and": [...]}`, `{"or": [...]}`, `{"not": {...}}`
- `{"field": "traits.plan" | "<contact column>", "op": "...", "value": ...}`
- `{"event": "Form Submitted", "type": "track", "where": [field tests on "properties.x" or
  event columns], "at_least": 1, "at_most": 3, "within_days": 30}`
- `{"not_done": "Pricing Viewed", "within_days": 14}` (has not done it in that window)
- `{"reachable": "email" | "sms"}` (address, consent granted, not unsubscribed or suppressed)
- `{"in_segment": "<segment id>"}`

Scores are fields too: `score` (the behavioural score decayed to now; 0 when never scored),
`grade` (fit grade, A best: `gte "B"` means A or B), `probability` (the predictive model's,
0 to 1). `lifecycle_stage` compares stages in funnel order (`gte "mql"`: MQL or later).

A JSON value is compared by the type of the condition's value: a trait holding the number 5
never equals the string "5". `neq` also matches contacts that lack the trait. Dates held in
traits are ISO-8601 strings in UTC, compared as text; `anniversary` (value: days ahead) matches
a date trait whose month and day fall that many days from today.
"""

from __future__ import annotations

import operator
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import InstrumentedAttribute

from capture.models import Contact, Event
from journeys.models import SegmentMember
from scoring.lifecycle import ALL_STAGES, STAGES
from scoring.models import SETTINGS_ROW_ID, ContactScore, ScoringSettings
from scoring.rules import GRADES
from scoring.sql import SECONDS_PER_DAY, epoch_seconds

MAX_DEPTH = 20
MAX_NODES = 200
MAX_IN_VALUES = 1000
MAX_DAYS = 36500
MAX_REGEX_LENGTH = 200
KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-$@]{1,100}")
ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"

COMPARISONS = ("eq", "neq", "gt", "gte", "lt", "lte")
TEXT_OPS = ("contains", "starts_with", "matches")
DATE_OPS = ("within_last_days", "more_than_days_ago", "within_next_days")
JSON_OPS = (*COMPARISONS, *TEXT_OPS, "in", "exists", *DATE_OPS, "anniversary")
ORDERED = ("gt", "gte", "lt", "lte")
COMPARE = {
    "eq": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
# The half-life a scoring settings row starts with, for databases that have none yet.
DEFAULT_HALF_LIFE_DAYS = 30.0

# Each column kind lists the operators that make sense on it.
KIND_OPS = {
    "text": (*COMPARISONS, *TEXT_OPS, "in", "exists"),
    "number": (*COMPARISONS, "in", "exists"),
    "boolean": ("eq", "neq"),
    "datetime": ("gt", "gte", "lt", "lte", "exists", *DATE_OPS),
    "list": ("contains", "exists"),
    "stage": (*COMPARISONS, "in", "exists"),
    "score": COMPARISONS,
    "probability": (*COMPARISONS, "exists"),
    "grade": (*COMPARISONS, "in"),
}
# Ranked kinds: the allowed values, best or furthest last for `gt`/`gte`.
RANKS = {"stage": STAGES, "grade": tuple(reversed(GRADES))}
SCORE_KINDS = ("score", "probability", "grade")

CONTACT_FIELDS: dict[str, tuple[InstrumentedAttribute[Any], str]] = {
    "email": (Contact.email, "text"),
    "phone": (Contact.phone, "text"),
    "user_id": (Contact.user_id, "text"),
    "is_known": (Contact.is_known, "boolean"),
    "timezone": (Contact.timezone, "text"),
    "lifecycle_stage": (Contact.lifecycle_stage, "stage"),
    "email_consent": (Contact.email_consent, "text"),
    "sms_consent": (Contact.sms_consent, "text"),
    "page_views": (Contact.page_views, "number"),
    "tags": (Contact.tags, "list"),
    "created_at": (Contact.created_at, "datetime"),
    "first_seen_at": (Contact.first_seen_at, "datetime"),
    "last_seen_at": (Contact.last_seen_at, "datetime"),
    "first_touch_channel": (Contact.first_touch_channel, "text"),
    "first_touch_source": (Contact.first_touch_source, "text"),
    "first_touch_campaign": (Contact.first_touch_campaign, "text"),
    "last_touch_channel": (Contact.last_touch_channel, "text"),
    "last_touch_source": (Contact.last_touch_source, "text"),
    "last_touch_campaign": (Contact.last_touch_campaign, "text"),
    "score": (ContactScore.behavior_score, "score"),
    "probability": (ContactScore.probability, "probability"),
    "grade": (ContactScore.grade, "grade"),
}

EVENT_FIELDS: dict[str, tuple[InstrumentedAttribute[Any], str]] = {
    "url": (Event.url, "text"),
    "path": (Event.path, "text"),
    "referrer": (Event.referrer, "text"),
    "channel": (Event.channel, "text"),
    "device_type": (Event.device_type, "text"),
}


class ConditionError(ValueError):
    """A condition that cannot be used; `path` names where in the tree, e.g. `and[1].op`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


@dataclass(frozen=True)
class FieldTest:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Behaviour:
    event: str | None
    type: str | None
    where: tuple[FieldTest, ...]
    at_least: int | None
    at_most: int | None
    within_days: int | None


@dataclass(frozen=True)
class Reachable:
    channel: str


@dataclass(frozen=True)
class InSegment:
    segment_id: uuid.UUID


Node = AllOf | AnyOf | Not | FieldTest | Behaviour | Reachable | InSegment


def parse(tree: Any, path: str = "condition") -> Node:
    """Validates a condition tree; raises ConditionError naming the first problem's path."""
    counter = [0]
    return _parse(tree, path, 0, counter)


def segment_ids(node: Node) -> set[uuid.UUID]:
    """Every segment the condition refers to."""
    if isinstance(node, InSegment):
        return {node.segment_id}
    if isinstance(node, AllOf | AnyOf):
        return set().union(*(segment_ids(part) for part in node.parts))
    if isinstance(node, Not):
        return segment_ids(node.part)
    return set()


def _parse(tree: Any, path: str, depth: int, counter: list[int]) -> Node:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise ConditionError(path, f"a condition may have at most {MAX_NODES} nodes")
    if depth > MAX_DEPTH:
        raise ConditionError(path, f"a condition may nest at most {MAX_DEPTH} levels")
    if not isinstance(tree, dict):
        raise ConditionError(path, "must be an object")
    if "and" in tree or "or" in tree:
        key = "and" if "and" in tree else "or"
        _only(tree, path, {key})
        parts = tree[key]
        if not isinstance(parts, list) or not parts:
            raise ConditionError(f"{path}.{key}", "must be a non-empty list of conditions")
        parsed = tuple(
            _parse(part, f"{path}.{key}[{i}]", depth + 1, counter) for i, part in enumerate(parts)
        )
        return AllOf(parsed) if key == "and" else AnyOf(parsed)
    if "not" in tree:
        _only(tree, path, {"not"})
        return Not(_parse(tree["not"], f"{path}.not", depth + 1, counter))
    if "field" in tree:
        return _parse_field(tree, path, CONTACT_FIELDS, "traits")
    if "event" in tree or "not_done" in tree or "type" in tree:
        return _parse_behaviour(tree, path)
    if "reachable" in tree:
        _only(tree, path, {"reachable"})
        if tree["reachable"] not in ("email", "sms"):
            raise ConditionError(f"{path}.reachable", "must be 'email' or 'sms'")
        return Reachable(tree["reachable"])
    if "in_segment" in tree:
        _only(tree, path, {"in_segment"})
        try:
            return InSegment(uuid.UUID(str(tree["in_segment"])))
        except ValueError:
            raise ConditionError(f"{path}.in_segment", "must be a segment id") from None
    known = "and, or, not, field, event, not_done, reachable, in_segment"
    raise ConditionError(path, f"unknown condition; expected one of the keys: {known}")


def _only(tree: dict[str, Any], path: str, allowed: set[str]) -> None:
    for key in tree:
        if key not in allowed:
            raise ConditionError(f"{path}.{key}", "unknown key")


def _parse_field(
    tree: dict[str, Any],
    path: str,
    columns: dict[str, tuple[InstrumentedAttribute[Any], str]],
    json_prefix: str,
) -> FieldTest:
    _only(tree, path, {"field", "op", "value"})
    field = tree.get("field")
    op = tree.get("op")
    if not isinstance(field, str):
        raise ConditionError(f"{path}.field", "must be a string")
    kind = _field_kind(field, f"{path}.field", columns, json_prefix)
    allowed = JSON_OPS if kind == "json" else KIND_OPS[kind]
    if op not in allowed:
        raise ConditionError(
            f"{path}.op", f"unknown operator {op!r} for {field}; use one of: {', '.join(allowed)}"
        )
    if "value" not in tree:
        raise ConditionError(f"{path}.value", "is required")
    value = _check_value(op, kind, tree["value"], f"{path}.value")
    return FieldTest(field, op, value)


def _field_kind(
    field: str,
    path: str,
    columns: dict[str, tuple[InstrumentedAttribute[Any], str]],
    json_prefix: str,
) -> str:
    if field.startswith(json_prefix + "."):
        if not KEY_PATTERN.fullmatch(field.removeprefix(json_prefix + ".")):
            raise ConditionError(path, "a key may hold letters, digits and _-$@ (1 to 100)")
        return "json"
    if field not in columns:
        names = ", ".join([f"{json_prefix}.<key>", *columns])
        raise ConditionError(path, f"unknown field {field!r}; known fields: {names}")
    return columns[field][1]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_value(op: str, kind: str, value: Any, path: str) -> Any:
    if op == "exists":
        if not isinstance(value, bool):
            raise ConditionError(path, "must be true or false")
        return value
    if op in DATE_OPS:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_DAYS:
            raise ConditionError(path, f"must be a whole number of days from 1 to {MAX_DAYS}")
        return value
    if op == "anniversary":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 366:
            raise ConditionError(path, "must be the number of days ahead, from 0 to 366")
        return value
    if op in ("contains", "starts_with"):
        if not isinstance(value, str) or not value:
            raise ConditionError(path, "must be a non-empty string")
        return value
    if op == "matches":
        if not isinstance(value, str):
            raise ConditionError(path, "must be a regular expression string")
        problem = regex_problem(value)
        if problem:
            raise ConditionError(path, problem)
        return value
    if op == "in":
        if not isinstance(value, list) or not 0 < len(value) <= MAX_IN_VALUES:
            raise ConditionError(path, f"must be a list of 1 to {MAX_IN_VALUES} values")
        for i, item in enumerate(value):
            _check_scalar(kind, item, f"{path}[{i}]", "in")
        if len({_scalar_type(item) for item in value}) > 1:
            raise ConditionError(path, "values must all have the same type")
        return tuple(value)
    return _check_scalar(kind, value, path, op)


def _check_scalar(kind: str, value: Any, path: str, op: str) -> Any:
    if kind in RANKS:
        allowed: tuple[str, ...] = STAGES if op in ORDERED else ALL_STAGES
        if kind == "grade":
            allowed = GRADES
        if value not in allowed:
            raise ConditionError(path, f"must be one of: {', '.join(allowed)}")
        return value
    if kind in ("score", "probability"):
        if not _is_number(value):
            raise ConditionError(path, "must be a number")
        if kind == "probability" and not 0 <= value <= 1:
            raise ConditionError(path, "must be a probability from 0 to 1")
        return value
    if kind == "datetime":
        if not isinstance(value, str):
            raise ConditionError(path, "must be an ISO-8601 date-time string")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ConditionError(path, "must be an ISO-8601 date-time string") from None
        if parsed.tzinfo is None:
            raise ConditionError(path, "must include a time zone offset")
        return parsed
    expected = {"text": (str,), "number": (int, float), "boolean": (bool,)}
    if kind in expected:
        ok = isinstance(value, expected[kind]) and (
            kind == "boolean" or not isinstance(value, bool)
        )
        if not ok:
            raise ConditionError(path, f"must be a {kind}")
        return value
    if op in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        raise ConditionError(path, "must be a number or a string")
    if not isinstance(value, str | int | float | bool):
        raise ConditionError(path, "must be a string, number or boolean")
    return value


def _scalar_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "number" if _is_number(value) else "string"


def _parse_behaviour(tree: dict[str, Any], path: str) -> Behaviour:
    if "not_done" in tree:
        _only(tree, path, {"not_done", "type", "where", "within_days"})
        name = tree["not_done"]
        name_path = f"{path}.not_done"
    else:
        _only(tree, path, {"event", "type", "where", "at_least", "at_most", "within_days"})
        name = tree.get("event")
        name_path = f"{path}.event"
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
        raise ConditionError(name_path, "must be an event name of 1 to 200 characters")
    event_type = tree.get("type")
    if event_type is not None and event_type not in ("track", "page", "screen", "identify"):
        raise ConditionError(f"{path}.type", "must be one of: track, page, screen, identify")
    if name is None and event_type is None:
        raise ConditionError(name_path, "an event name or type is required")
    filters = parse_event_filters(tree.get("where", []), f"{path}.where")
    at_least: int | None = None
    at_most: int | None = 0
    if "not_done" not in tree:
        at_least = _count(tree, "at_least", path)
        at_most = _count(tree, "at_most", path)
        if at_least is None and at_most is None:
            at_least = 1
        if at_least is not None and at_most is not None and at_most < at_least:
            raise ConditionError(f"{path}.at_most", "must not be below at_least")
    within_days = tree.get("within_days")
    if within_days is not None and (
        not isinstance(within_days, int)
        or isinstance(within_days, bool)
        or not 0 < within_days <= MAX_DAYS
    ):
        raise ConditionError(f"{path}.within_days", f"must be a whole number from 1 to {MAX_DAYS}")
    return Behaviour(name, event_type, filters, at_least, at_most, within_days)


def parse_event_filters(where: Any, path: str) -> tuple[FieldTest, ...]:
    """Tests on an event's properties (`properties.<key>`) or columns (url, path, …)."""
    if not isinstance(where, list):
        raise ConditionError(path, "must be a list of property tests")
    return tuple(
        _parse_field(_object(item, f"{path}[{i}]"), f"{path}[{i}]", EVENT_FIELDS, "properties")
        for i, item in enumerate(where)
    )


def _object(item: Any, path: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConditionError(path, "must be an object")
    return item


def _count(tree: dict[str, Any], key: str, path: str) -> int | None:
    value = tree.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
        raise ConditionError(f"{path}.{key}", "must be a whole number from 0 to 1000000")
    return value


def regex_problem(pattern: str) -> str | None:
    """Why a pattern is refused, or None. Hand-written because neither database offers a
    check: refused are back-references, look-arounds and other `(?` groups, and any
    quantified group that itself holds a quantifier or an alternation (catastrophic
    backtracking); only this subset means the same to PostgreSQL and Python's `re`."""
    if len(pattern) > MAX_REGEX_LENGTH:
        return f"a pattern may be at most {MAX_REGEX_LENGTH} characters"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    groups: list[dict[str, bool]] = [{"quantified": False, "alternation": False}]
    last_group: dict[str, bool] | None = None
    i = 0
    while i < len(pattern):
        char = pattern[i]
        closed: dict[str, bool] | None = None
        if char == "\\":
            if i + 1 < len(pattern) and pattern[i + 1].isdigit():
                return "back-references are not allowed"
            i += 2
        elif char == "[":
            i = _class_end(pattern, i) + 1
        elif char == "(":
            if pattern.startswith("(?", i):
                return "groups starting with (? (look-arounds, flags, names) are not allowed"
            groups.append({"quantified": False, "alternation": False})
            i += 1
        elif char == ")":
            closed = groups.pop()
            i += 1
        elif char == "|":
            groups[-1]["alternation"] = True
            i += 1
        elif char in "*+?" or (char == "{" and re.match(r"\{\d+(,\d*)?\}", pattern[i:])):
            if last_group is not None and (last_group["quantified"] or last_group["alternation"]):
                return "a repeated group may not contain repetition or alternation (slow regex)"
            groups[-1]["quantified"] = True
            i = pattern.index("}", i) + 1 if char == "{" else i + 1
            if i < len(pattern) and pattern[i] == "?":
                i += 1
        else:
            i += 1
        if closed is not None:
            groups[-1]["quantified"] |= closed["quantified"]
        last_group = closed
    return None


def _class_end(pattern: str, start: int) -> int:
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i


class Compiler:
    """Turns a parsed condition into a SQL boolean over `contacts` for one database.

    The boolean may be NULL where a value is missing; NULL means "no" under `and`, `or` and
    WHERE, and `not` turns it into FALSE first. Leaving it NULL elsewhere keeps the tests
    plain column comparisons the planner can estimate and index.

    `bulk` is for queries over all contacts (full rebuilds, previews): counted behaviour is
    then one grouped pass over events instead of a count per contact.
    """

    def __init__(self, now: datetime, postgres: bool, bulk: bool = False) -> None:
        self.now = now
        self.postgres = postgres
        self.bulk = bulk

    def members(self, node: Node) -> Select[uuid.UUID]:
        """The ids of live (not merged) contacts meeting the condition."""
        return select(Contact.id).where(Contact.merged_into_id.is_(None), self.compile(node))

    def compile(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, AllOf):
            return and_(*(self.compile(part) for part in node.parts))
        if isinstance(node, AnyOf):
            return or_(*(self.compile(part) for part in node.parts))
        if isinstance(node, Not):
            return not_(func.coalesce(self.compile(node.part), false()))
        if isinstance(node, FieldTest):
            return self._field(node, Contact.traits, "traits", CONTACT_FIELDS)
        if isinstance(node, Behaviour):
            return self._behaviour(node)
        if isinstance(node, Reachable):
            return self._reachable(node.channel)
        return exists().where(
            SegmentMember.segment_id == node.segment_id, SegmentMember.contact_id == Contact.id
        )

    def _field(
        self,
        test: FieldTest,
        json_column: InstrumentedAttribute[Any],
        json_prefix: str,
        columns: dict[str, tuple[InstrumentedAttribute[Any], str]],
    ) -> ColumnElement[bool]:
        if test.field.startswith(json_prefix + "."):
            key = test.field.removeprefix(json_prefix + ".")
            expr = self._json_test(json_column, key, test.op, test.value)
        else:
            column, kind = columns[test.field]
            if kind in SCORE_KINDS:
                expr = self._score_test(column, kind, test.op, test.value)
            else:
                expr = self._column_test(column, kind, test.op, test.value)
        # `neq` is "not equal", so that it also holds where the value is missing.
        return not_(func.coalesce(expr, false())) if test.op == "neq" else expr

    def _json_test(
        self, column: InstrumentedAttribute[Any], key: str, op: str, value: Any
    ) -> ColumnElement[bool]:
        json_type = self._json_type(column, key)
        if op == "exists":
            present = and_(json_type.is_not(None), json_type != "null")
            return present if value else not_(func.coalesce(present, false()))
        if op in DATE_OPS:
            text = self._typed(column, key, json_type, "string")
            low, high = self._date_window(op, value)
            bounds = []
            if low is not None:
                bounds.append(self._ordered(text) >= low.strftime(ISO_SECONDS))
            if high is not None:
                bounds.append(self._ordered(text) <= high.strftime(ISO_SECONDS))
            return and_(*bounds)
        if op == "anniversary":
            # Month and day of the ISO date, N days from today (UTC).
            text = self._typed(column, key, json_type, "string")
            day = (self.now + timedelta(days=value)).strftime("%m-%d")
            return func.substr(text, 6, 5) == day
        if self.postgres and op in ("eq", "neq", "in"):
            # jsonb equality weighs type and value at once, reading the key once per row.
            if op == "in":
                return column[key].in_([literal(item, JSONB) for item in value])
            return column[key] == literal(value, JSONB)
        sample = value[0] if op == "in" else value
        typed = self._typed(column, key, json_type, _scalar_type(sample))
        return self._compare(typed, _scalar_type(sample), op, value)

    def _column_test(
        self, column: InstrumentedAttribute[Any], kind: str, op: str, value: Any
    ) -> ColumnElement[bool]:
        if op == "exists":
            present: ColumnElement[bool] = column.is_not(None)
            if kind in ("text", "stage"):
                present = and_(present, column != "")
            elif kind == "list":
                length = func.jsonb_array_length if self.postgres else func.json_array_length
                present = and_(present, length(column) > 0)
            return present if value else not_(func.coalesce(present, false()))
        if kind == "list":
            return self._list_contains(column, value)
        if kind == "stage" and op in ORDERED:
            return column.in_(_ranked(kind, op, value))
        if op in DATE_OPS:
            low, high = self._date_window(op, value)
            bounds = []
            if low is not None:
                bounds.append(column >= low)
            if high is not None:
                bounds.append(column <= high)
            return and_(*bounds)
        if kind == "datetime":
            return self._compare(column, "datetime", op, value)
        return self._compare(column, "number" if kind == "number" else "string", op, value)

    def _score_test(
        self, column: InstrumentedAttribute[Any], kind: str, op: str, value: Any
    ) -> ColumnElement[bool]:
        """A test on the contact's `contact_scores` row, as a semi- or anti-join."""
        if kind == "score":
            # Never scored is a score of 0: a test 0 passes holds unless a row says otherwise.
            test = self._compare(self.score_now(), "number", op, value)
            owned = ContactScore.contact_id == Contact.id
            if COMPARE["eq" if op == "neq" else op](0, value):
                return not_(exists().where(owned, not_(test)))
            return exists().where(owned, test)
        if op == "exists":
            present = exists().where(ContactScore.contact_id == Contact.id, column.is_not(None))
            return present if value else not_(present)
        if kind == "grade" and op in ORDERED:
            test = column.in_(_ranked(kind, op, value))
        else:
            test = self._compare(column, "number" if kind == "probability" else "string", op, value)
        return exists().where(ContactScore.contact_id == Contact.id, test)

    def score_now(self) -> ColumnElement[float]:
        """The behavioural score decayed from `behavior_as_of` to now, with the half-life
        read from the settings row inside the same query."""
        half_life = func.coalesce(
            select(ScoringSettings.half_life_days)
            .where(ScoringSettings.id == SETTINGS_ROW_ID)
            .scalar_subquery(),
            DEFAULT_HALF_LIFE_DAYS,
        )
        age_days = (
            literal(self.now.timestamp()) - epoch_seconds(ContactScore.behavior_as_of)
        ) / SECONDS_PER_DAY
        return ContactScore.behavior_score * func.power(0.5, age_days / half_life)

    def trait_text(self, key: str) -> ColumnElement[str]:
        """The contact's trait as text that compares in byte order; NULL unless a string."""
        json_type = self._json_type(Contact.traits, key)
        return self._ordered(self._typed(Contact.traits, key, json_type, "string"))

    def _compare(self, expr: Any, kind: str, op: str, value: Any) -> ColumnElement[bool]:
        if op == "in":
            return expr.in_(list(value))
        if op == "contains":
            position = func.strpos(expr, value) if self.postgres else func.instr(expr, value)
            return position > 0
        if op == "starts_with":
            return func.substr(expr, 1, len(value)) == value
        if op == "matches":
            return expr.regexp_match(value)
        if op in ("eq", "neq"):
            # Equality needs no collation: every collation in use is deterministic.
            return expr == value
        ordered = self._ordered(expr) if kind == "string" else expr
        return COMPARE[op](ordered, value)

    def _ordered(self, text: Any) -> Any:
        # Byte order on both databases; PostgreSQL's default collation would sort otherwise.
        return text.collate("C" if self.postgres else "BINARY")

    def _date_window(self, op: str, days: int) -> tuple[datetime | None, datetime | None]:
        span = timedelta(days=days)
        if op == "within_last_days":
            return self.now - span, self.now
        if op == "within_next_days":
            return self.now, self.now + span
        return None, self.now - span

    def _json_type(self, column: InstrumentedAttribute[Any], key: str) -> ColumnElement[str]:
        if self.postgres:
            return func.jsonb_typeof(column[key])
        return func.json_type(column, f'$."{key}"')

    def _typed(
        self, column: InstrumentedAttribute[Any], key: str, json_type: Any, kind: str
    ) -> ColumnElement[Any]:
        """The JSON value as SQL of `kind`, NULL when it holds another type."""
        names = {
            "string": ("string",) if self.postgres else ("text",),
            "number": ("number",) if self.postgres else ("integer", "real"),
            "boolean": ("boolean",) if self.postgres else ("true", "false"),
        }[kind]
        value = {
            "string": column[key].as_string(),
            "number": column[key].as_float(),
            "boolean": column[key].as_boolean(),
        }[kind]
        return case((json_type.in_(names), value))

    def _list_contains(self, column: InstrumentedAttribute[Any], value: str) -> ColumnElement[bool]:
        if self.postgres:
            return column.bool_op("@>")(func.jsonb_build_array(value))
        elements = func.json_each(column).table_valued("value")
        return exists(select(literal(1)).select_from(elements).where(elements.c.value == value))

    def event_filters(self, where: tuple[FieldTest, ...]) -> list[ColumnElement[bool]]:
        """SQL for tests on `events` rows (property filters of triggers and waits)."""
        return [self._field(test, Event.properties, "properties", EVENT_FIELDS) for test in where]

    def _behaviour(self, node: Behaviour) -> ColumnElement[bool]:
        criteria: list[ColumnElement[bool]] = []
        if node.event is not None:
            criteria.append(Event.name == node.event)
        if node.type is not None:
            criteria.append(Event.type == node.type)
        if node.within_days is not None:
            criteria.append(Event.timestamp >= self.now - timedelta(days=node.within_days))
        criteria.extend(self.event_filters(node.where))
        matching = (
            select(literal(1))
            .select_from(Event)
            .where(Event.contact_id == Contact.id, *criteria)
            .correlate(Contact)
        )
        if node.at_most == 0:
            return not_(exists(matching))
        at_least = node.at_least or 0
        if node.at_most is None and at_least <= 1:
            return exists(matching) if at_least else true()
        if self.bulk:
            return self._counted_in_bulk(criteria, at_least, node.at_most)
        # Counting stops one past the largest number that matters.
        limit = (node.at_most + 1) if node.at_most is not None else at_least
        counted = select(func.count()).select_from(matching.limit(limit).subquery())
        count = counted.scalar_subquery()
        bounds = []
        if at_least:
            bounds.append(count >= at_least)
        if node.at_most is not None:
            bounds.append(count <= node.at_most)
        return and_(*bounds)

    def _counted_in_bulk(
        self, criteria: list[ColumnElement[bool]], at_least: int, at_most: int | None
    ) -> ColumnElement[bool]:
        """Counts as `IN` over one grouped scan of the matching events, which the database
        runs once as a hash (a correlated count would run once per contact)."""

        def doing_at_least(times: int) -> ColumnElement[bool]:
            return Contact.id.in_(
                select(Event.contact_id)
                .where(*criteria)
                .group_by(Event.contact_id)
                .having(func.count() >= times)
            )

        bounds = []
        if at_least:
            bounds.append(doing_at_least(at_least))
        if at_most is not None:
            bounds.append(not_(doing_at_least(at_most + 1)))
        return and_(*bounds)

    def _reachable(self, channel: str) -> ColumnElement[bool]:
        if channel == "email":
            return and_(
                Contact.email.is_not(None),
                Contact.email != "",
                Contact.email_consent == "granted",
                Contact.email_unsubscribed.is_(False),
                Contact.suppressed.is_(False),
            )
        return and_(
            Contact.phone.is_not(None),
            Contact.phone != "",
            Contact.sms_consent == "granted",
            Contact.sms_unsubscribed.is_(False),
            Contact.suppressed.is_(False),
        )


def _ranked(kind: str, op: str, value: str) -> list[str]:
    """The values a ranked comparison (`gte "mql"`, `gt "C"`) lets through."""
    ranks = RANKS[kind]
    position = ranks.index(value)
    return list(
        {
            "gt": ranks[position + 1 :],
            "gte": ranks[position:],
            "lt": ranks[:position],
            "lte": ranks[: position + 1],
        }[op]
    )
