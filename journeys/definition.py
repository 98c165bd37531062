"""A journey's JSON definition and its validation: node types, edges, reachability, cycles
that never wait, templates that do not exist; every problem is named `nodes.<id>.<field>`.

    {"trigger": {"type": "event", "event": "Form Submitted", "where": [...]}
                | {"type": "event", "call": "page",
                   "where": [{"field": "path", "op": "starts_with", "value": "/pricing"}]}
                | {"type": "segment_entry" | "segment_exit", "segment_id": "..."}
                | {"type": "trait_change", "trait": "plan", "condition": <condition>}
                | {"type": "date_trait", "trait": "trial_ends_at", "offset_days": -3,
                   "time": "09:00"}
                | {"type": "manual"},
     "reentry": {"mode": "once" | "after_exit" | "every", "min_gap_hours": 24},
     "goal": <condition>,
     "start": "welcome",
     "nodes": [{"id": "welcome", "type": "send_email", "template_id": "...", "next": "wait"},
               ...]}
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from channels.models import Robot, Template, WebhookEndpoint
from journeys.conditions import KEY_PATTERN, ConditionError, parse, parse_event_filters
from journeys.models import STATIC, Journey, Segment
from scoring.lifecycle import ALL_STAGES

NODE_ID = re.compile(r"[A-Za-z0-9_\-]{1,100}")
MAX_NODES = 200
WAIT_TYPES = {"wait", "wait_until", "wait_for_date", "wait_for_event"}
# Each node type and the fields naming the nodes it leads to.
EDGES: dict[str, tuple[str, ...]] = {
    "send_email": ("next",),
    "send_sms": ("next",),
    "call_webhook": ("next",),
    "notify_sales": ("next",),
    "update_contact": ("next",),
    "set_lifecycle_stage": ("next",),
    "adjust_score": ("next",),
    "handoff": ("next",),
    "add_to_segment": ("next",),
    "remove_from_segment": ("next",),
    "enroll_in_journey": ("next",),
    "condition": ("yes", "no"),
    "split": (),
    "wait": ("next",),
    "wait_until": ("next",),
    "wait_for_date": ("next",),
    "wait_for_event": ("matched", "timed_out"),
    "exit": (),
}
REENTRY_MODES = ("once", "after_exit", "every")
DATE_TRAIT = "date_trait"
MAX_OFFSET_DAYS = 3650
DEFAULT_TRIGGER_TIME = "09:00"
TIME_OF_DAY = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
TRIGGER_TYPES = "event, segment_entry, segment_exit, trait_change, date_trait, manual"
# The Segment call types an event trigger or wait may name instead of (or beside) an event.
CALL_TYPES = ("track", "page", "screen")
MAX_POINTS = 10_000  # scoring's bound on one adjustment


class DefinitionError(ValueError):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def nodes_by_id(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["id"]: node for node in definition["nodes"]}


def successors(node: dict[str, Any]) -> list[str]:
    if node["type"] == "split":
        return [branch["next"] for branch in node["branches"]]
    return [node[edge] for edge in EDGES[node["type"]] if node.get(edge) is not None]


def duration(value: Any, path: str, errors: dict[str, str]) -> timedelta | None:
    if not isinstance(value, dict) or not value or set(value) - {"days", "hours", "minutes"}:
        errors[path] = "must be an object of days, hours and/or minutes"
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()):
        errors[path] = "days, hours and minutes must be whole numbers of at least 0"
        return None
    span = timedelta(**value)
    if not timedelta(0) < span <= timedelta(days=3650):
        errors[path] = "must be more than zero and at most ten years"
        return None
    return span


def validate(session: Session, definition: Any) -> dict[str, Any]:
    """Returns the definition if it can be published; raises DefinitionError naming every
    problem found (node and field)."""
    errors: dict[str, str] = {}
    if not isinstance(definition, dict):
        raise DefinitionError({"definition": "must be an object"})
    _check_trigger(session, definition.get("trigger"), errors)
    _check_reentry(definition.get("reentry"), errors)
    if definition.get("goal") is not None:
        _condition(definition["goal"], "goal", errors)
    nodes = definition.get("nodes")
    if not isinstance(nodes, list) or not 0 < len(nodes) <= MAX_NODES:
        errors["nodes"] = f"must be a list of 1 to {MAX_NODES} nodes"
        raise DefinitionError(errors)
    seen: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("id"), str):
            errors[f"nodes[{index}].id"] = "every node is an object with a string id"
            continue
        if not NODE_ID.fullmatch(node["id"]):
            errors[f"nodes[{index}].id"] = "letters, digits, _ and - only (1 to 100)"
            continue
        if node["id"] in seen:
            errors[f"nodes.{node['id']}.id"] = "is used by two nodes"
            continue
        seen[node["id"]] = node
        _check_node(session, node, f"nodes.{node['id']}", errors)
    start = definition.get("start")
    if not isinstance(start, str) or start not in seen:
        errors["start"] = "must name one of the nodes"
    if errors:
        raise DefinitionError(errors)
    for node_id, node in seen.items():
        for edge, target in _edges(node):
            if target not in seen:
                errors[f"nodes.{node_id}.{edge}"] = f"leads to {target!r}, which is not a node"
    if errors:
        raise DefinitionError(errors)
    reachable = _reachable(seen, str(start))
    for node_id in seen:
        if node_id not in reachable:
            errors[f"nodes.{node_id}"] = "is unreachable from the start node"
    cycle = _cycle_without_wait(seen)
    if cycle:
        errors[f"nodes.{cycle[0]}"] = "is on a loop without a wait: " + " → ".join(cycle)
    if errors:
        raise DefinitionError(errors)
    return definition


def _edges(node: dict[str, Any]) -> list[tuple[str, str]]:
    if node["type"] == "split":
        return [(f"branches[{i}].next", b["next"]) for i, b in enumerate(node["branches"])]
    return [(edge, node[edge]) for edge in EDGES[node["type"]] if node.get(edge) is not None]


def _check_trigger(session: Session, trigger: Any, errors: dict[str, str]) -> None:
    if not isinstance(trigger, dict):
        errors["trigger"] = f"must be an object with a type, one of: {TRIGGER_TYPES}"
        return
    kind = trigger.get("type")
    if kind == "event":
        _check_event_match(trigger, "trigger", errors)
    elif kind in ("segment_entry", "segment_exit"):
        try:
            segment_id = uuid.UUID(str(trigger.get("segment_id")))
        except ValueError:
            errors["trigger.segment_id"] = "must be a segment id"
            return
        if session.get(Segment, segment_id) is None:
            errors["trigger.segment_id"] = f"segment {segment_id} does not exist"
    elif kind == "trait_change":
        if not isinstance(trigger.get("trait"), str) or not KEY_PATTERN.fullmatch(trigger["trait"]):
            errors["trigger.trait"] = "must be a trait name (letters, digits and _-$@, 1 to 100)"
        if trigger.get("condition") is not None:
            _condition(trigger["condition"], "trigger.condition", errors)
    elif kind == DATE_TRAIT:
        _check_date_trigger(trigger, errors)
    elif kind != "manual":
        errors["trigger.type"] = f"must be one of: {TRIGGER_TYPES}"


def _check_date_trigger(trigger: dict[str, Any], errors: dict[str, str]) -> None:
    trait = trigger.get("trait")
    if not isinstance(trait, str) or not KEY_PATTERN.fullmatch(trait):
        errors["trigger.trait"] = (
            "must name a trait holding an ISO-8601 date or UTC date-time"
            " (letters, digits and _-$@, 1 to 100)"
        )
    offset = trigger.get("offset_days", 0)
    if (
        not isinstance(offset, int)
        or isinstance(offset, bool)
        or not -MAX_OFFSET_DAYS <= offset <= MAX_OFFSET_DAYS
    ):
        errors["trigger.offset_days"] = (
            f"must be whole days from -{MAX_OFFSET_DAYS} to {MAX_OFFSET_DAYS}"
            " (negative: before the date, 0: on the day, positive: after)"
        )
    at = trigger.get("time", DEFAULT_TRIGGER_TIME)
    if not isinstance(at, str) or not TIME_OF_DAY.fullmatch(at):
        errors["trigger.time"] = "must be a time of day as HH:MM, in the contact's time zone"


def _check_event_match(spec: dict[str, Any], path: str, errors: dict[str, str]) -> None:
    """The events an event trigger or a wait for an event takes: by name, by call type
    (`call`; page views usually have no name), or both, with property filters."""
    name, call = spec.get("event"), spec.get("call")
    if call is not None and call not in CALL_TYPES:
        errors[f"{path}.call"] = f"must be one of: {', '.join(CALL_TYPES)}"
    if name is None and call is None:
        errors[f"{path}.event"] = (
            'is required: an event name, or a call type (e.g. "call": "page" for page'
            " views, with filters on url or path)"
        )
    elif name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
        errors[f"{path}.event"] = "must be an event name of 1 to 200 characters"
    try:
        parse_event_filters(spec.get("where", []), f"{path}.where")
    except ConditionError as error:
        errors[error.path] = error.message


def _check_reentry(reentry: Any, errors: dict[str, str]) -> None:
    if reentry is None:
        return
    if not isinstance(reentry, dict) or reentry.get("mode") not in REENTRY_MODES:
        errors["reentry.mode"] = f"must be one of: {', '.join(REENTRY_MODES)}"
        return
    gap = reentry.get("min_gap_hours", 0)
    if not isinstance(gap, int) or isinstance(gap, bool) or not 0 <= gap <= 87600:
        errors["reentry.min_gap_hours"] = "must be a whole number of hours from 0 to 87600"


def _condition(tree: Any, path: str, errors: dict[str, str]) -> None:
    try:
        parse(tree, path)
    except ConditionError as error:
        errors[error.path] = error.message


def _check_node(session: Session, node: dict[str, Any], path: str, errors: dict[str, str]) -> None:
    kind = node.get("type")
    if kind not in EDGES:
        errors[f"{path}.type"] = f"unknown node type {kind!r}; use one of: {', '.join(EDGES)}"
        return
    for edge in EDGES[kind]:
        target = node.get(edge)
        if target is not None and not isinstance(target, str):
            errors[f"{path}.{edge}"] = "must be a node id"
    if kind in ("send_email", "send_sms"):
        channel = "email" if kind == "send_email" else "sms"
        try:
            template_id = uuid.UUID(str(node.get("template_id")))
        except ValueError:
            errors[f"{path}.template_id"] = "must be a template id"
            return
        template = session.scalar(select(Template).where(Template.id == template_id))
        if template is None or template.archived_at is not None:
            errors[f"{path}.template_id"] = f"template {template_id} does not exist or is archived"
        elif template.channel != channel:
            errors[f"{path}.template_id"] = f"is a {template.channel} template, not {channel}"
    elif kind == "call_webhook":
        if session.get(WebhookEndpoint, _uuid(node.get("endpoint_id"))) is None:
            errors[f"{path}.endpoint_id"] = "must name an existing webhook endpoint"
        _check_optional_template(session, node, "webhook", path, errors)
    elif kind == "notify_sales":
        robot = session.get(Robot, _uuid(node.get("robot_id")))
        if robot is None:
            errors[f"{path}.robot_id"] = "must name an existing WeCom or DingTalk robot"
        else:
            _check_optional_template(session, node, robot.kind, path, errors)
    elif kind == "update_contact":
        traits = node.get("traits", {})
        if not isinstance(traits, dict):
            errors[f"{path}.traits"] = "must be an object"
        for field in ("add_tags", "remove_tags"):
            tags = node.get(field, [])
            if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
                errors[f"{path}.{field}"] = "must be a list of tags"
    elif kind == "set_lifecycle_stage":
        if node.get("stage") not in ALL_STAGES:
            errors[f"{path}.stage"] = f"must be one of: {', '.join(ALL_STAGES)}"
    elif kind == "adjust_score":
        _check_adjustment(node, path, errors)
    elif kind == "condition":
        _condition(node.get("condition"), f"{path}.condition", errors)
    elif kind == "split":
        _check_split(node.get("branches"), f"{path}.branches", errors)
    elif kind == "wait":
        duration(node.get("duration"), f"{path}.duration", errors)
    elif kind == "wait_until":
        if not isinstance(node.get("time"), str) or not TIME_OF_DAY.fullmatch(node["time"]):
            errors[f"{path}.time"] = "must be a time of day as HH:MM"
        weekdays = node.get("weekdays", [1, 2, 3, 4, 5, 6, 7])
        if (
            not isinstance(weekdays, list)
            or not weekdays
            or not all(isinstance(d, int) and 1 <= d <= 7 for d in weekdays)
        ):
            errors[f"{path}.weekdays"] = "must list ISO weekdays, 1 (Monday) to 7 (Sunday)"
    elif kind in ("add_to_segment", "remove_from_segment"):
        segment = session.get(Segment, _uuid(node.get("segment_id")))
        if segment is None or segment.kind != STATIC:
            errors[f"{path}.segment_id"] = "must name an existing static segment"
    elif kind == "enroll_in_journey":
        if session.get(Journey, _uuid(node.get("journey_id"))) is None:
            errors[f"{path}.journey_id"] = "must name an existing journey"
    elif kind == "wait_for_date":
        if not isinstance(node.get("trait"), str) or not KEY_PATTERN.fullmatch(node["trait"]):
            errors[f"{path}.trait"] = "must name a trait holding an ISO-8601 date-time"
        offset = node.get("offset_hours", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or abs(offset) > 87600:
            errors[f"{path}.offset_hours"] = "must be whole hours from -87600 to 87600"
    elif kind == "wait_for_event":
        _check_event_match(node, path, errors)
        duration(node.get("timeout"), f"{path}.timeout", errors)
        for edge in ("matched", "timed_out"):
            if node.get(edge) is None:
                errors[f"{path}.{edge}"] = "is required"


def _check_adjustment(node: dict[str, Any], path: str, errors: dict[str, str]) -> None:
    points = node.get("points")
    if (
        not isinstance(points, int | float)
        or isinstance(points, bool)
        or not 0 < abs(points) <= MAX_POINTS
    ):
        errors[f"{path}.points"] = (
            f"must be a non-zero number of points from -{MAX_POINTS} to {MAX_POINTS}"
            " (negative subtracts)"
        )
    note = node.get("note")
    if note is not None and (not isinstance(note, str) or not 3 <= len(note) <= 200):
        errors[f"{path}.note"] = "must be a note of 3 to 200 characters"


def _check_optional_template(
    session: Session, node: dict[str, Any], channel: str, path: str, errors: dict[str, str]
) -> None:
    if node.get("template_id") is None:
        return
    template = session.get(Template, _uuid(node["template_id"]))
    if template is None or template.archived_at is not None:
        errors[f"{path}.template_id"] = "does not exist or is archived"
    elif template.channel != channel:
        errors[f"{path}.template_id"] = f"is a {template.channel} template, not {channel}"


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return uuid.UUID(int=0)


def _check_split(branches: Any, path: str, errors: dict[str, str]) -> None:
    if not isinstance(branches, list) or len(branches) < 2:
        errors[path] = "must list at least two branches"
        return
    total = 0
    for i, branch in enumerate(branches):
        percent = branch.get("percent") if isinstance(branch, dict) else None
        if not isinstance(percent, int) or isinstance(percent, bool) or not 0 < percent <= 100:
            errors[f"{path}[{i}].percent"] = "must be a whole percentage from 1 to 100"
            return
        if not isinstance(branch.get("next"), str):
            errors[f"{path}[{i}].next"] = "must be a node id"
            return
        total += percent
    if total != 100:
        errors[path] = f"percentages must add up to 100, not {total}"


def _reachable(nodes: dict[str, dict[str, Any]], start: str) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for target in successors(nodes[stack.pop()]):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _cycle_without_wait(nodes: dict[str, dict[str, Any]]) -> list[str] | None:
    """A loop through nodes none of which waits would spin forever in one step."""
    graph = {
        node_id: [] if node["type"] in WAIT_TYPES else successors(node)
        for node_id, node in nodes.items()
    }
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node_id: str) -> list[str] | None:
        state[node_id] = 1
        path.append(node_id)
        for target in graph[node_id]:
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node_id] = 2
        path.pop()
        return None

    for node_id in graph:
        if node_id not in state:
            found = visit(node_id)
            if found:
                return found
    return None
