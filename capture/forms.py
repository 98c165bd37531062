"""Forms: the definitions marketers manage, and a visitor's submission checked field by field
and handed to the ingest worker as one identify (traits, consent) plus one `form_submitted`."""

from __future__ import annotations

import math
import re
import re._parser as re_parser  # the stdlib's own regex parser: the tree the ReDoS checks walk
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.identity import normalize_email, normalize_phone, strip_control_characters
from capture.models import Form, FormSubmission, Source
from capture.queue import get_queue
from capture.schemas import Name, PlainText, ReadModel
from capture.tracking import envelope_for_single
from core.clock import clock
from core.settings import get_settings

FieldType = Literal["text", "email", "phone", "number", "select", "checkbox", "textarea", "hidden"]
FIELD_NAME = r"^[a-z][a-z0-9_]{0,63}$"
VISITOR_KEY = "nurture_aid"
PAGE_URL_KEY = "page_url"
CONSENT_PREFIX = "consent_"
DEFAULT_MAX_LENGTH = {"textarea": 5000, "email": 320, "phone": 64, "number": 64}
TEXT_MAX_LENGTH = 500
PATTERN_TYPES = frozenset({"text", "textarea", "hidden"})
MAX_URL_LENGTH = 2000
MAX_SPAM_VALUE = 1000
TICKED = frozenset({"true", "on", "1", "yes"})
UNTICKED = frozenset({"", "false", "off", "0", "no"})

FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME)]
Text = Annotated[PlainText, StringConstraints(max_length=2000)]


class FormFieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FieldName = Field(description="lower-case letters, digits and _, e.g. `first_name`")
    label: Annotated[PlainText, StringConstraints(max_length=300)] = ""
    type: FieldType = "text"
    required: bool = False
    options: list[Annotated[PlainText, StringConstraints(min_length=1, max_length=200)]] | None = (
        Field(default=None, max_length=200, description="the choices of a select")
    )
    max_length: int | None = Field(default=None, ge=1, le=5000)
    pattern: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        default=None, description="a regular expression the whole value must match"
    )
    maps_to: FieldName | None = Field(
        default=None, description="the contact trait it fills: email, phone, first_name, ..."
    )
    placeholder: Annotated[PlainText, StringConstraints(max_length=200)] | None = None
    default: Annotated[PlainText, StringConstraints(max_length=500)] | None = Field(
        default=None, description="the value of a hidden field the page leaves empty"
    )


class ConsentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["email", "sms"]
    text: Annotated[PlainText, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        max_length=2000, description="shown beside the checkbox and recorded as the proof"
    )
    required: bool = False


class FormDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    fields: list[FormFieldSpec] = Field(min_length=1, max_length=50)
    consents: list[ConsentSpec] = Field(default_factory=list, max_length=2)
    honeypot_field: FieldName = "website_url"
    submit_label: Annotated[PlainText, StringConstraints(min_length=1, max_length=100)] = "Submit"
    success_message: Annotated[Text, StringConstraints(min_length=1)] = "Thank you!"
    redirect_url: Annotated[str, StringConstraints(max_length=MAX_URL_LENGTH)] | None = None


class FormCreate(FormDefinition):
    source_id: uuid.UUID


class FormUpdate(BaseModel):
    """Only the keys sent change; `fields` and `consents` are replaced whole."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    fields: list[FormFieldSpec] | None = Field(default=None, min_length=1, max_length=50)
    consents: list[ConsentSpec] | None = Field(default=None, max_length=2)
    honeypot_field: FieldName | None = None
    submit_label: Annotated[PlainText, StringConstraints(min_length=1, max_length=100)] | None = (
        None
    )
    success_message: Annotated[Text, StringConstraints(min_length=1)] | None = None
    redirect_url: Annotated[str, StringConstraints(max_length=MAX_URL_LENGTH)] | None = None


class FormEmbed(BaseModel):
    script_url: str
    html: str = Field(description="paste into the page where the form should appear")
    page_url: str = Field(description="a standalone page with only this form")
    submit_url: str = Field(description="the action of a site's own HTML form")


class FormRead(ReadModel):
    id: uuid.UUID
    source_id: uuid.UUID
    name: str
    fields: list[dict[str, Any]]
    consents: list[dict[str, Any]]
    honeypot_field: str
    submit_label: str
    success_message: str
    redirect_url: str | None
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    embed: FormEmbed | None = None


class FormPage(BaseModel):
    items: list[FormRead]


# Definitions


def invalid(fields: dict[str, str]) -> ApiError:
    return ApiError(422, "invalid", "invalid request: " + _describe(fields), fields)


def _describe(fields: dict[str, str]) -> str:
    return ", ".join(f"{name}: {problem}" for name, problem in fields.items())


def definition_errors(definition: FormDefinition) -> dict[str, str]:
    """The rules across fields that pydantic's per-field checks cannot see."""
    errors: dict[str, str] = {}
    seen_names: set[str] = set()
    seen_traits: set[str] = set()
    for index, spec in enumerate(definition.fields):
        at = f"fields.{index}."
        if spec.name in seen_names:
            errors[at + "name"] = f"'{spec.name}' is used by another field"
        elif spec.name in (VISITOR_KEY, PAGE_URL_KEY) or spec.name.startswith(CONSENT_PREFIX):
            errors[at + "name"] = f"'{spec.name}' is reserved"
        elif spec.name == definition.honeypot_field:
            errors[at + "name"] = "is the honeypot field's name"
        seen_names.add(spec.name)
        if spec.type == "select" and not spec.options:
            errors[at + "options"] = "a select needs at least one option"
        elif spec.type != "select" and spec.options is not None:
            errors[at + "options"] = "only a select has options"
        if spec.pattern is not None:
            if spec.type not in PATTERN_TYPES:
                errors[at + "pattern"] = "only text, textarea and hidden fields take a pattern"
            elif problem := pattern_problem(spec.pattern):
                errors[at + "pattern"] = problem
        if spec.max_length is not None and spec.type in ("select", "checkbox", "number"):
            errors[at + "max_length"] = f"a {spec.type} field has no max_length"
        if spec.maps_to is not None:
            if spec.maps_to in seen_traits:
                errors[at + "maps_to"] = f"another field already fills '{spec.maps_to}'"
            elif spec.maps_to in ("email", "phone") and spec.type != spec.maps_to:
                errors[at + "maps_to"] = f"only a {spec.maps_to} field can fill '{spec.maps_to}'"
            seen_traits.add(spec.maps_to)
    channels = [consent.channel for consent in definition.consents]
    for index, channel in enumerate(channels):
        if channel in channels[:index]:
            errors[f"consents.{index}.channel"] = f"there is already a consent for {channel}"
    if definition.redirect_url is not None and not _is_web_url(definition.redirect_url):
        errors["redirect_url"] = "must be an http(s) URL"
    return errors


def _is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def create_form(session: Session, data: FormCreate) -> Form:
    errors = definition_errors(data)
    source = session.get(Source, data.source_id)
    if source is None:
        errors["source_id"] = "no source has this id"
    if errors:
        raise invalid(errors)
    form = Form(source_id=data.source_id, **_columns(data))
    session.add(form)
    session.flush()
    return form


def _columns(definition: FormDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", exclude={"source_id"})


def get_form(session: Session, form_id: uuid.UUID) -> Form:
    form = session.get(Form, form_id)
    if form is None:
        raise ApiError(404, "not_found", f"form {form_id} not found")
    return form


def list_forms(
    session: Session,
    source_id: uuid.UUID | None,
    include_archived: bool,
    limit: int,
    offset: int,
) -> list[Form]:
    query = select(Form).order_by(Form.created_at.desc(), Form.id).limit(limit).offset(offset)
    if source_id is not None:
        query = query.where(Form.source_id == source_id)
    if not include_archived:
        query = query.where(Form.archived_at.is_(None))
    return list(session.scalars(query))


def update_form(session: Session, form: Form, changes: FormUpdate) -> Form:
    current = FormDefinition.model_validate(
        {name: getattr(form, name) for name in FormDefinition.model_fields}
    )
    given = changes.model_dump(include=changes.model_fields_set)
    required = {"name", "fields", "consents", "honeypot_field", "submit_label", "success_message"}
    for name in required & changes.model_fields_set:
        if given[name] is None:
            raise invalid({name: "cannot be null"})
    merged = FormDefinition.model_validate({**current.model_dump(), **given})
    errors = definition_errors(merged)
    if errors:
        raise invalid(errors)
    for name, value in _columns(merged).items():
        setattr(form, name, value)
    session.flush()
    return form


def archive_form(session: Session, form: Form) -> Form:
    if form.archived_at is None:
        form.archived_at = clock.now()
        session.flush()
    return form


def embed_urls(form_id: uuid.UUID, base_url: str) -> FormEmbed:
    base = base_url.rstrip("/")
    script = f"{base}/v1/forms/{form_id}/embed.js"
    return FormEmbed(
        script_url=script,
        html=f'<div data-nurture-form="{form_id}"></div>\n<script src="{script}" async></script>',
        page_url=f"{base}/v1/forms/{form_id}",
        submit_url=f"{base}/v1/forms/{form_id}/submit",
    )


def public_definition(form: Form, base_url: str) -> dict[str, Any]:
    """What the embed needs to draw the form; mappings and patterns stay on the server."""
    shown = ("name", "label", "type", "required", "options", "max_length", "placeholder", "default")
    return {
        "id": str(form.id),
        "name": form.name,
        "fields": [{key: spec.get(key) for key in shown} for spec in form.fields],
        "consents": [
            {key: consent[key] for key in ("channel", "text", "required")}
            for consent in form.consents
        ],
        "honeypot_field": form.honeypot_field,
        "submit_label": form.submit_label,
        "submit_url": embed_urls(form.id, base_url).submit_url,
    }


def active_form(session: Session, form_id: uuid.UUID) -> tuple[Form, Source]:
    """A form the public may see and submit: not archived, its source not disabled."""
    row = session.execute(
        select(Form, Source)
        .join(Source, Source.id == Form.source_id)
        .where(Form.id == form_id, Form.archived_at.is_(None), Source.disabled_at.is_(None))
    ).first()
    if row is None:
        raise ApiError(404, "not_found", f"form {form_id} not found")
    return row[0], row[1]


# Patterns. Hand-written because the one ReDoS checker on PyPI (regexploit) misses ambiguous
# alternation such as (a|a)* and imports modules Python 3.11 deprecates. The rules are
# conservative: a pattern they refuse can always be rewritten without nested repetition.

LOOSE_REPEAT = 50  # a repeat allowing more items than this backtracks like an unbounded one
REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
SINGLE_CHARACTER = frozenset({"LITERAL", "NOT_LITERAL", "ANY", "IN"})
NESTED = "nested quantifiers such as (a+)+ can take exponential time; simplify the pattern"
AMBIGUOUS = (
    "a repeated alternation whose branches can start alike, such as (a|ab)*, "
    "can take exponential time"
)
ADJACENT = "adjacent repeats of overlapping characters, such as \\d+\\d+, can take polynomial time"
CATEGORY_PATTERNS = {
    "CATEGORY_DIGIT": re.compile(r"\d"),
    "CATEGORY_NOT_DIGIT": re.compile(r"\D"),
    "CATEGORY_SPACE": re.compile(r"\s"),
    "CATEGORY_NOT_SPACE": re.compile(r"\S"),
    "CATEGORY_WORD": re.compile(r"\w"),
    "CATEGORY_NOT_WORD": re.compile(r"\W"),
}
PROBE_CHARACTERS = [chr(code) for code in range(0x180)] + list("\u00a0\u3000中文\uff10\uff21😀")

Item = tuple[Any, Any]


def pattern_problem(pattern: str) -> str | None:
    """Why a field pattern is refused (invalid, or open to catastrophic backtracking), or None."""
    try:
        re.compile(pattern)
        parsed = list(re_parser.parse(pattern))
    except (re.error, RecursionError, OverflowError) as exc:
        return f"is not a valid regular expression: {exc}"
    return _sequence_problem(parsed, in_variable_repeat=False)


def _sequence_problem(items: list[Item], in_variable_repeat: bool) -> str | None:
    if problem := _adjacency_problem(_flattened(items)):
        return problem
    for op, arg in items:
        kind = str(op)
        if kind in ("GROUPREF", "GROUPREF_EXISTS"):
            return "must not use backreferences"
        if kind in REPEATS:
            low, high, body = arg
            variable = low != high
            if variable and not _repeat_is_separated(list(body)):
                return NESTED
            problem = _sequence_problem(list(body), in_variable_repeat or variable)
        elif kind == "BRANCH":
            branches = [list(branch) for branch in arg[1]]
            if in_variable_repeat and not _branches_start_apart(branches):
                return AMBIGUOUS
            problem = next(
                (p for b in branches if (p := _sequence_problem(b, in_variable_repeat))), None
            )
        elif kind == "SUBPATTERN":
            problem = _sequence_problem(list(arg[3]), in_variable_repeat)
        elif kind in ("ASSERT", "ASSERT_NOT"):
            problem = _sequence_problem(list(arg[1]), in_variable_repeat)
        elif kind == "ATOMIC_GROUP":
            problem = _sequence_problem(list(arg), in_variable_repeat)
        else:
            problem = None
        if problem:
            return problem
    return None


def _repeat_is_separated(body: list[Item]) -> bool:
    """A repeat may hold repeats of single characters only when each round starts or ends
    with a character those cannot match, as in (\\.\\d+)* or (\\d{1,3}\\.)+."""
    inner = _variable_repeats(body)
    if not inner:
        return True
    inner_characters = [_single_character(list(repeat[2])) for repeat in inner]
    if any(character is None for character in inner_characters):
        return False
    flat = _flattened(body)
    for edge in (flat[0], flat[-1]):
        anchor = _single_character([edge])
        if anchor is not None and not any(
            _overlap(anchor, character) for character in inner_characters if character
        ):
            return True
    return False


def _variable_repeats(items: list[Item]) -> list[Any]:
    found: list[Any] = []
    for op, arg in items:
        kind = str(op)
        if kind in REPEATS:
            if arg[0] != arg[1]:
                found.append(arg)
            found.extend(_variable_repeats(list(arg[2])))
        elif kind == "SUBPATTERN":
            found.extend(_variable_repeats(list(arg[3])))
        elif kind == "BRANCH":
            for branch in arg[1]:
                found.extend(_variable_repeats(list(branch)))
    return found


def _branches_start_apart(branches: list[list[Item]]) -> bool:
    starts = [_single_character(branch[:1]) if branch else None for branch in branches]
    if any(start is None for start in starts):
        return False
    return not any(_overlap(a, b) for i, a in enumerate(starts) for b in starts[i + 1 :] if a and b)


def _flattened(items: list[Item]) -> list[Item]:
    """The sequence as the matcher walks it: plain groups opened, fixed repeats written out
    twice (enough to see one round run into the next)."""
    flat: list[Item] = []
    for op, arg in items:
        kind = str(op)
        if kind == "SUBPATTERN":
            flat.extend(_flattened(list(arg[3])))
        elif kind in REPEATS and arg[0] == arg[1] and arg[0] >= 1:
            flat.extend(_flattened(list(arg[2])) * min(arg[0], 2))
        else:
            flat.append((op, arg))
    return flat


def _adjacency_problem(items: list[Item]) -> str | None:
    open_run: Item | None = None  # the last loose repeat no separator has closed yet
    for op, arg in items:
        kind = str(op)
        if kind == "AT":
            continue
        if kind in REPEATS:
            low, high, body = arg
            character = _single_character(list(body))
            loose = high is re_parser.MAXREPEAT or high > LOOSE_REPEAT
            if character is None:
                open_run = None
            elif loose:
                if open_run is not None and _overlap(open_run, character):
                    return ADJACENT
                open_run = character
            elif low >= 1 and open_run is not None and not _overlap(open_run, character):
                open_run = None
        elif kind in SINGLE_CHARACTER:
            if open_run is not None and not _overlap(open_run, (op, arg)):
                open_run = None
        else:
            open_run = None
    return None


def _single_character(items: list[Item]) -> Item | None:
    if len(items) != 1:
        return None
    op, arg = items[0]
    kind = str(op)
    if kind in SINGLE_CHARACTER:
        return items[0]
    if kind == "SUBPATTERN":
        return _single_character(list(arg[3]))
    return None


def _overlap(a: Item, b: Item) -> bool:
    probes = PROBE_CHARACTERS + _mentioned_characters(a) + _mentioned_characters(b)
    return any(_matches(a, char) and _matches(b, char) for char in probes)


def _mentioned_characters(item: Item) -> list[str]:
    op, arg = item
    if str(op) in ("LITERAL", "NOT_LITERAL"):
        return [chr(arg)]
    if str(op) != "IN":
        return []
    found: list[str] = []
    for member_op, member_arg in arg:
        if str(member_op) == "LITERAL":
            found.append(chr(member_arg))
        elif str(member_op).startswith("RANGE"):
            found.extend((chr(member_arg[0]), chr(member_arg[1])))
    return found


def _matches(item: Item, char: str) -> bool:
    op, arg = item
    kind = str(op)
    code = ord(char)
    if kind == "LITERAL":
        return code == arg
    if kind == "NOT_LITERAL":
        return code != arg
    if kind == "ANY":
        return char != "\n"
    negate = False
    hit = False
    for member_op, member_arg in arg:
        member = str(member_op)
        if member == "NEGATE":
            negate = True
        elif member == "LITERAL":
            hit = hit or code == member_arg
        elif member.startswith("RANGE"):
            hit = hit or member_arg[0] <= code <= member_arg[1]
        elif member == "CATEGORY":
            category = CATEGORY_PATTERNS.get(str(member_arg))
            hit = hit or category is None or bool(category.fullmatch(char))
        else:
            hit = True
    return hit != negate


# Submissions


@dataclass(frozen=True)
class Visitor:
    """Who submitted, from where: the request facts kept with the submission."""

    anonymous_id: str | None
    page_url: str | None
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class SubmissionOutcome:
    message: str
    redirect_url: str | None


def submit(
    session: Session, form: Form, raw: Mapping[str, Any], visitor: Visitor
) -> SubmissionOutcome:
    """Validates and stores a submission, then queues it for ingest in the same unit of work:
    the row is flushed before the queue put, so a refused put (QueueUnavailable, or any
    error) propagates and the caller's rollback leaves nothing stored."""
    outcome = SubmissionOutcome(form.success_message, form.redirect_url)
    if _filled(raw.get(form.honeypot_field)):
        session.add(_submission(form, "spam", _spam_data(raw), visitor))
        session.flush()
        return outcome
    values, consents, errors = clean_values(form, raw)
    if errors:
        count = f"{len(errors)} field{'s' if len(errors) > 1 else ''}"
        raise ApiError(422, "invalid", f"{count} need attention: {', '.join(errors)}", errors)
    visitor = replace(visitor, anonymous_id=visitor.anonymous_id or str(uuid.uuid4()))
    data = {
        **values,
        **{CONSENT_PREFIX + channel: granted for channel, granted in consents.items()},
    }
    submission = _submission(form, "accepted", data, visitor)
    session.add(submission)
    session.flush()
    envelopes = submission_envelopes(form, submission, values, consents)
    get_queue().put_sync(orjson.dumps(envelopes))
    return outcome


def _submission(form: Form, status: str, data: dict[str, Any], visitor: Visitor) -> FormSubmission:
    return FormSubmission(
        form_id=form.id,
        status=status,
        data=data,
        anonymous_id=visitor.anonymous_id,
        ip=visitor.ip,
        page_url=visitor.page_url,
        user_agent=(visitor.user_agent or "")[:1000] or None,
        created_at=clock.now(),
    )


def _filled(value: Any) -> bool:
    return value not in (None, "", False)


def _spam_data(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What a bot sent, cut down so a spam run cannot fill the database."""
    return {
        _spam_text(key, 100): _spam_text(value, MAX_SPAM_VALUE)
        for key, value in list(raw.items())[:60]
    }


def _spam_text(value: Any, limit: int) -> str:
    return strip_control_characters(str(value))[:limit]


def clean_values(
    form: Form, raw: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, bool], dict[str, str]]:
    """Typed, normalised values and consent decisions, or the problem with each field.

    Normalisation: surrounding whitespace is trimmed and control characters removed (line
    breaks kept in a textarea); emails are lower-cased, phones written in E.164."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for spec in form.fields:
        name = spec["name"]
        try:
            value = _clean_value(spec, raw.get(name))
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        if value is not None:
            values[name] = value
    consents: dict[str, bool] = {}
    for consent in form.consents:
        key = CONSENT_PREFIX + consent["channel"]
        try:
            consents[consent["channel"]] = ticked = _ticked(raw.get(key))
        except ValueError as exc:
            errors[key] = str(exc)
            continue
        if consent["required"] and not ticked:
            errors[key] = "must be ticked to continue"
    return values, consents, errors


def _ticked(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TICKED | UNTICKED:
        return value.strip().lower() in TICKED
    raise ValueError("must be true or false")


def _clean_value(spec: dict[str, Any], value: Any) -> Any:
    kind = spec["type"]
    if kind == "checkbox":
        ticked = _ticked(value)
        if spec["required"] and not ticked:
            raise ValueError("must be ticked")
        return ticked
    if isinstance(value, bool) or not isinstance(value, str | int | float | None):
        raise ValueError("must be a single text value")
    text = "" if value is None else str(value)
    if kind == "textarea":
        text = strip_control_characters(text).strip()
    else:
        text = " ".join(strip_control_characters(text).split())
    if not text and kind == "hidden" and spec.get("default"):
        text = spec["default"]
    if not text:
        if spec["required"]:
            raise ValueError("is required")
        return None
    limit = spec.get("max_length") or DEFAULT_MAX_LENGTH.get(kind, TEXT_MAX_LENGTH)
    if len(text) > limit:
        raise ValueError(f"must be at most {limit} characters")
    if kind == "email":
        email = normalize_email(text)
        if email is None:
            raise ValueError("is not a valid email address")
        return email
    if kind == "phone":
        phone = normalize_phone(text)
        if phone is None:
            raise ValueError("is not a valid phone number")
        return phone
    if kind == "number":
        return _number(text)
    if kind == "select" and text not in spec["options"]:
        raise ValueError("must be one of: " + ", ".join(spec["options"]))
    if spec.get("pattern") and re.fullmatch(spec["pattern"], text) is None:
        raise ValueError("does not have the expected format")
    return text


def _number(text: str) -> int | float:
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a number")
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def submission_envelopes(
    form: Form, submission: FormSubmission, values: dict[str, Any], consents: dict[str, bool]
) -> list[dict[str, Any]]:
    """One identify (mapped traits, consent decisions, the submission id) and one
    `form_submitted` track, shaped exactly as the tracking API queues them."""
    settings = get_settings()
    received_at = clock.now()
    skew = timedelta(seconds=settings.max_clock_skew_seconds)
    meta = {
        "sourceId": str(form.source_id),
        "ip": submission.ip,
        "userAgent": submission.user_agent,
    }
    context = {"page": {"url": submission.page_url}} if submission.page_url else {}
    traits = {
        spec["maps_to"]: values[spec["name"]]
        for spec in form.fields
        if spec.get("maps_to") and spec["name"] in values
    }
    texts = {consent["channel"]: consent["text"] for consent in form.consents}
    base = {"anonymousId": submission.anonymous_id, "context": context}
    identify = envelope_for_single(
        {**base, "messageId": f"form-submission-{submission.id}-identify", "traits": traits},
        "identify",
        received_at,
        meta,
        skew,
    )
    track = envelope_for_single(
        {
            **base,
            "messageId": f"form-submission-{submission.id}-submitted",
            "event": "form_submitted",
            "properties": {
                "form_id": str(form.id),
                "form_name": form.name,
                "submission_id": submission.id,
            },
        },
        "track",
        received_at,
        meta,
        skew,
    )
    identify["consents"] = [
        {
            "channel": channel,
            "granted": granted,
            "text": texts[channel],
            "formId": str(form.id),
            "pageUrl": submission.page_url,
        }
        for channel, granted in consents.items()
    ]
    identify["formSubmissionId"] = submission.id
    return [identify, track]


def visitor_id(value: Any) -> str | None:
    """The visitor's anonymous id if it is one the tracking API would accept, else None."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        return None
    value = value.strip()
    return value if value.isprintable() else None


def page_url(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or not _is_web_url(value):
        return None
    return value if value.isprintable() else None
