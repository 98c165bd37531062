"""What a scoring rule may say, the SQL it compiles to, and the defaults a marketer starts with.

A behavioural rule matches events: a type (`track` with an event name, or `page` with an
optional page name) plus conditions on event columns (`path`, `url`, `referrer`, `channel`)
or properties (`properties.plan`). A fit rule tests one trait of the contact or its company.
Conditions are `{"field", "op", "value"}`; the operators are listed in OPERATORS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import SQLColumnExpression, and_, case, exists, false, func, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from capture.models import Company, Contact, Event
from scoring.sql import safe_number

BEHAVIOR = "behavior"
FIT = "fit"
EVENT_TYPES = ("track", "page")
TEXT_OPERATORS = ("equals", "not_equals", "contains", "starts_with", "in", "contains_any")
NUMBER_OPERATORS = ("gt", "gte", "lt", "lte", "between")
OPERATORS = (*TEXT_OPERATORS, *NUMBER_OPERATORS, "exists")
EVENT_COLUMNS = {
    "path": Event.path,
    "url": Event.url,
    "referrer": Event.referrer,
    "channel": Event.channel,
}
FREE_EMAIL_DOMAINS = (
    "qq.com",
    "163.com",
    "126.com",
    "yeah.net",
    "foxmail.com",
    "sina.com",
    "sina.cn",
    "sohu.com",
    "139.com",
    "aliyun.com",
    "gmail.com",
    "hotmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
)
# Events other parts of Nurture send; a rule may name these before any has arrived.
KNOWN_EVENTS = frozenset(
    {
        "form_submitted",
        "whitepaper_downloaded",
        "newsletter_subscribed",
        "email_sent",
        "email_opened",
        "email_clicked",
        "email_bounced",
        "email_unsubscribed",
        "sms_sent",
        "sms_delivered",
        "sms_unsubscribed",
        "became_mql",
        "sales_accepted",
        "opportunity_created",
        "deal_won",
        "deal_lost",
    }
)


def _company_or_contact(key: str) -> ColumnElement[Any]:
    return func.coalesce(Company.traits[key].as_string(), Contact.traits[key].as_string())


def _email_domain_kind() -> ColumnElement[Any]:
    email = func.lower(Contact.email)
    return case(
        (Contact.email.is_(None), None),
        (or_(*[email.like(f"%@{domain}") for domain in FREE_EMAIL_DOMAINS]), "free"),
        else_="company",
    )


# Fit traits by name: the SQL value each one reads (contacts joined to their company).
FIT_TRAITS: dict[str, Callable[[], SQLColumnExpression[Any]]] = {
    "job_title": lambda: Contact.traits["title"].as_string(),
    "industry": lambda: _company_or_contact("industry"),
    "company_size": lambda: _company_or_contact("employees"),
    "province": lambda: _company_or_contact("province"),
    "city": lambda: _company_or_contact("city"),
    "email_domain": _email_domain_kind,
}
NUMERIC_TRAITS = frozenset({"company_size"})
CUSTOM_TRAIT_PREFIXES = ("traits.", "company.")


@dataclass(frozen=True)
class RuleSpec:
    """A rule's definition as given by a marketer, before it is stored."""

    kind: str
    name: str
    points: float
    event_type: str | None = None
    event_name: str | None = None
    trait: str | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    daily_limit: int | None = None
    first_time_only: bool = False
    enabled: bool = True


def trait_value(trait: str) -> SQLColumnExpression[Any]:
    if trait in FIT_TRAITS:
        return FIT_TRAITS[trait]()
    if trait.startswith("traits."):
        return Contact.traits[trait.removeprefix("traits.")].as_string()
    return Company.traits[trait.removeprefix("company.")].as_string()


def event_field(name: str) -> SQLColumnExpression[Any]:
    if name in EVENT_COLUMNS:
        return EVENT_COLUMNS[name]
    return Event.properties[name.removeprefix("properties.")].as_string()


def condition_sql(value_of: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "exists":
        return value_of.is_not(None) if value else value_of.is_(None)
    if op == "equals":
        return value_of == str(value)
    if op == "not_equals":
        return or_(value_of.is_(None), value_of != str(value))
    if op == "contains":
        return value_of.contains(str(value), autoescape=True)
    if op == "starts_with":
        return value_of.startswith(str(value), autoescape=True)
    if op == "in":
        return value_of.in_([str(v) for v in value])
    if op == "contains_any":
        return or_(*[value_of.contains(str(v), autoescape=True) for v in value])
    number = safe_number(value_of)
    if op == "between":
        return number.between(float(value[0]), float(value[1]))
    return {
        "gt": number > float(value),
        "gte": number >= float(value),
        "lt": number < float(value),
        "lte": number <= float(value),
    }[op]


def event_condition(
    event_type: str | None, event_name: str | None, conditions: Sequence[dict[str, Any]]
) -> ColumnElement[bool]:
    """Which events a behavioural rule matches."""
    parts = [Event.type == event_type]
    if event_name:
        parts.append(Event.name == event_name)
    for c in conditions:
        parts.append(condition_sql(event_field(c["field"]), c["op"], c.get("value")))
    return and_(*parts)


def fit_condition(trait: str, conditions: Sequence[dict[str, Any]]) -> ColumnElement[bool]:
    """Whether a contact (joined to its company) has the trait value a fit rule asks for."""
    if not conditions:
        return false()
    value = trait_value(trait)
    return and_(*[condition_sql(value, c["op"], c.get("value")) for c in conditions])


def check_condition(where: str, condition: Any, errors: dict[str, str], numeric: bool) -> None:
    if not isinstance(condition, dict):
        errors[where] = "must be an object with field, op and value"
        return
    op, value = condition.get("op"), condition.get("value")
    if op not in OPERATORS:
        errors[f"{where}.op"] = "must be one of " + ", ".join(OPERATORS)
        return
    if op == "between":
        if not isinstance(value, list) or len(value) != 2 or not all(map(_is_number, value)):
            errors[f"{where}.value"] = "must be a list of two numbers [low, high]"
        elif float(value[0]) > float(value[1]):
            errors[f"{where}.value"] = "low must not be above high"
    elif op in NUMBER_OPERATORS:
        if not _is_number(value):
            errors[f"{where}.value"] = "must be a number"
    elif op in ("in", "contains_any"):
        if not isinstance(value, list) or not value:
            errors[f"{where}.value"] = "must be a non-empty list"
        elif not all(isinstance(v, str | int | float) for v in value):
            errors[f"{where}.value"] = "must list strings or numbers"
    elif op == "exists":
        if not isinstance(value, bool):
            errors[f"{where}.value"] = "must be true or false"
    elif not isinstance(value, str | int | float) or isinstance(value, bool):
        errors[f"{where}.value"] = "must be a string or number"
    elif numeric:
        errors[f"{where}.op"] = "a numeric trait needs gt, gte, lt, lte, between or exists"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def event_seen(session: Session, event_type: str, name: str) -> bool:
    return bool(
        session.scalar(select(exists().where(Event.type == event_type, Event.name == name)))
    )


def custom_trait_seen(session: Session, trait: str) -> bool:
    if trait.startswith("traits."):
        column = Contact.traits[trait.removeprefix("traits.")]
    else:
        column = Company.traits[trait.removeprefix("company.")]
    return bool(session.scalar(select(exists().where(column.as_string().is_not(None)))))


def validate(session: Session, spec: RuleSpec) -> dict[str, str]:
    """Field → message for everything wrong with a rule; empty when it can be stored."""
    errors: dict[str, str] = {}
    if spec.kind == BEHAVIOR:
        if spec.event_type not in EVENT_TYPES:
            errors["event_type"] = "must be track or page"
        elif spec.event_type == "track" and not spec.event_name:
            errors["event_name"] = "is required for a track rule"
        elif (
            spec.event_name
            and spec.event_name not in KNOWN_EVENTS
            and not event_seen(session, spec.event_type, spec.event_name)
        ):
            errors["event_name"] = f"no {spec.event_type} event named {spec.event_name!r} exists"
        if spec.trait is not None:
            errors["trait"] = "a behavioural rule matches events, not traits"
        for index, condition in enumerate(spec.conditions):
            where = f"conditions.{index}"
            name = condition.get("field") if isinstance(condition, dict) else None
            if not isinstance(name, str) or not (
                name in EVENT_COLUMNS or (name.startswith("properties.") and len(name) > 11)
            ):
                errors[f"{where}.field"] = (
                    "must be path, url, referrer, channel or properties.<name>"
                )
                continue
            check_condition(where, condition, errors, numeric=False)
        if spec.daily_limit is not None and spec.daily_limit < 1:
            errors["daily_limit"] = "must be at least 1 (or null for no limit)"
    elif spec.kind == FIT:
        trait = spec.trait or ""
        custom = trait.startswith(CUSTOM_TRAIT_PREFIXES) and len(trait.split(".", 1)[1]) > 0
        if trait not in FIT_TRAITS and not custom:
            errors["trait"] = "must be one of " + ", ".join(FIT_TRAITS) + " or traits.<name>"
        elif custom and not custom_trait_seen(session, trait):
            errors["trait"] = f"no contact or company has the trait {trait!r}"
        if spec.event_type or spec.event_name:
            errors["event_name"] = "a fit rule tests traits, not events"
        if spec.daily_limit is not None or spec.first_time_only:
            errors["daily_limit"] = "daily limits and first-time-only apply to behaviour rules"
        if len(spec.conditions) != 1:
            errors["conditions"] = "a fit rule has exactly one condition on its trait"
        for index, condition in enumerate(spec.conditions):
            check_condition(f"conditions.{index}", condition, errors, trait in NUMERIC_TRAITS)
    else:
        errors["kind"] = "must be behavior or fit"
    if not spec.name.strip():
        errors["name"] = "is required"
    return errors


def _behavior(
    name: str,
    points: float,
    event_type: str,
    event_name: str | None = None,
    conditions: list[dict[str, Any]] | None = None,
    daily_limit: int | None = None,
    first_time_only: bool = False,
) -> RuleSpec:
    return RuleSpec(
        BEHAVIOR,
        name,
        points,
        event_type=event_type,
        event_name=event_name,
        conditions=conditions or [],
        daily_limit=daily_limit,
        first_time_only=first_time_only,
    )


def _fit(name: str, points: float, trait: str, op: str, value: Any) -> RuleSpec:
    return RuleSpec(FIT, name, points, trait=trait, conditions=[{"op": op, "value": value}])


DEFAULT_RULES = (
    _behavior("Form submitted", 50, "track", "form_submitted"),
    _behavior(
        "Pricing page viewed",
        10,
        "page",
        conditions=[{"field": "path", "op": "starts_with", "value": "/pricing"}],
        daily_limit=2,
    ),
    _behavior("Page view", 1, "page", daily_limit=10),
    _behavior("Email clicked", 5, "track", "email_clicked", daily_limit=3),
    _behavior("Whitepaper downloaded", 15, "track", "whitepaper_downloaded"),
    _behavior("Unsubscribed", -20, "track", "email_unsubscribed", first_time_only=True),
    _behavior(
        "Hard bounce",
        -10,
        "track",
        "email_bounced",
        conditions=[{"field": "properties.bounce_type", "op": "equals", "value": "hard"}],
        first_time_only=True,
    ),
    _fit(
        "Senior decision maker",
        20,
        "job_title",
        "contains_any",
        ["CEO", "CTO", "CIO", "VP", "总监", "Director", "Head", "总经理"],
    ),
    _fit("Manager", 10, "job_title", "contains_any", ["经理", "Manager"]),
    _fit(
        "Student or intern", -30, "job_title", "contains_any", ["学生", "实习", "Student", "Intern"]
    ),
    _fit("Target industry", 15, "industry", "in", ["制造业", "软件和信息技术", "金融"]),
    _fit("Mid-size or large company", 15, "company_size", "gte", 200),
    _fit("Very small company", -10, "company_size", "lt", 50),
    _fit("Tier-one region", 5, "province", "in", ["北京", "上海", "广东", "浙江"]),
    _fit("Company email", 10, "email_domain", "equals", "company"),
    _fit("Free email", -15, "email_domain", "equals", "free"),
)
DEFAULT_GRADE_THRESHOLDS = {"A": 50.0, "B": 30.0, "C": 15.0, "D": 0.0, "E": -15.0}
GRADES = ("A", "B", "C", "D", "E", "F")


def grade_sql(fit_points: ColumnElement[float], thresholds: dict[str, Any]) -> ColumnElement[str]:
    """A for the best fit down to F for the worst: the first grade whose threshold is met."""
    return case(
        *[(fit_points >= float(thresholds[g]), literal(g)) for g in GRADES[:-1]],
        else_=literal(GRADES[-1]),
    )


def grade_for(fit_points: float, thresholds: dict[str, Any]) -> str:
    for grade in GRADES[:-1]:
        if fit_points >= float(thresholds[grade]):
            return grade
    return GRADES[-1]


def check_grade_thresholds(thresholds: Any) -> str | None:
    if not isinstance(thresholds, dict) or set(thresholds) != set(GRADES[:-1]):
        return "must give a number for each of A, B, C, D and E (below E is F)"
    if not all(_is_number(v) for v in thresholds.values()):
        return "must give a number for each of A, B, C, D and E (below E is F)"
    values = [float(thresholds[g]) for g in GRADES[:-1]]
    if values != sorted(values, reverse=True):
        return "must fall from A to E"
    return None
