"""Normalisation of what identifies a person (email, phone) and of the free-form JSON
(properties, traits, context) stored with every event."""

from __future__ import annotations

import re

import orjson
import phonenumbers
from email_validator import EmailNotValidError, validate_email

# Longer input cannot become a valid address (254) or phone number; refuse it before parsing.
MAX_RAW_EMAIL_LENGTH = 320
MAX_RAW_PHONE_LENGTH = 64

# C0 and C1 controls except tab, newline and carriage return (NUL included: PostgreSQL rejects
# it in text and JSONB), and lone surrogates, which UTF-8 cannot encode.
# The surrogates are spelled with chr(): mypyc cannot compile them in a string literal.
CONTROL_CHARACTERS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f" + chr(0xD800) + "-" + chr(0xDFFF) + "]"
)
# What those characters look like once orjson has encoded them: \u00XX escapes, \b and \f,
# raw DEL and raw C1 bytes, \xc2 then \x80-\x9f (lone surrogates make orjson raise instead).
_ENCODED_C1 = re.compile(rb"\xc2[\x80-\x9f]")


def normalize_email(value: object) -> str | None:
    """The trimmed, lowercased address if its syntax is valid (no DNS lookup), else None."""
    if not isinstance(value, str) or len(value) > MAX_RAW_EMAIL_LENGTH:
        return None
    try:
        checked = validate_email(value.strip(), check_deliverability=False, strict=True)
    except EmailNotValidError:
        return None
    return checked.normalized.lower()


def normalize_phone(value: object, default_region: str = "CN") -> str | None:
    """The number in E.164 (`+8613800138000`) if it is a valid number, else None.

    Numbers without a country code are read in `default_region`; an extension is dropped."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > MAX_RAW_PHONE_LENGTH:
        return None
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def strip_control_characters(value: str) -> str:
    # isprintable() is false for every character the pattern removes, and much faster.
    return value if value.isprintable() else CONTROL_CHARACTERS.sub("", value)


def clean_json(value: object, max_string: int = 10_000, max_depth: int = 20) -> object:
    """JSON data that is safe to store: control characters stripped from every string and key,
    strings cut to `max_string` characters, and objects or arrays nested deeper than
    `max_depth` replaced by null. Clean input comes back as it is; anything changed is a copy."""
    if isinstance(value, dict | list) and _already_clean(value, max_string, max_depth):
        return value
    return _clean(value, max_string, max_depth)


def clean_json_each(
    values: list[object], max_string: int = 10_000, max_depth: int = 20
) -> list[object]:
    """`clean_json` of each value. One test of them all together settles the common case (all
    clean) for the price of one: the whole is within each limit only if every part is."""
    if _already_clean(values, max_string, max_depth):
        return values
    return [clean_json(value, max_string, max_depth) for value in values]


def _already_clean(value: dict | list, max_string: int, max_depth: int) -> bool:
    # Ingest cleans every event's JSON; one encode and a byte scan settle the common case
    # (nothing to change) far faster than walking the tree. Each test is conservative.
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return (
        len(encoded) <= max_string
        and encoded.count(b"{") + encoded.count(b"[") <= max_depth
        and not _may_hold_control_characters(encoded)
    )


def _may_hold_control_characters(encoded: bytes) -> bool:
    # Substring tests find a byte with memchr; one regular expression of the alternatives
    # tried each at every position, several times slower. Most JSON has no backslash, DEL or
    # \xc2 at all. An escaped backslash before b, f or u00 is a false alarm, which only sends
    # the value the slow, exact way.
    return (
        (b"\\" in encoded and (b"\\u00" in encoded or b"\\b" in encoded or b"\\f" in encoded))
        or b"\x7f" in encoded
        or (b"\xc2" in encoded and _ENCODED_C1.search(encoded) is not None)
    )


def _clean(value: object, max_string: int, depth_left: int) -> object:
    if isinstance(value, str):
        return _clean_string(value, max_string)
    if isinstance(value, dict):
        if depth_left <= 0:
            return None
        return {
            _clean_string(str(key), max_string): _clean(item, max_string, depth_left - 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        if depth_left <= 0:
            return None
        return [_clean(item, max_string, depth_left - 1) for item in value]
    return value


def _clean_string(value: str, max_string: int) -> str:
    return strip_control_characters(value)[:max_string]
