"""Signed tokens in tracking and unsubscribe URLs: an id plus an HMAC, checked in constant time,
so nobody can forge a click, an open or an unsubscribe for someone else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

from core.ids import sign, signature_matches
from core.settings import get_settings

# SMS links must be short: a 96-bit signature in base64url is still far beyond guessing.
SHORT_SIGNATURE_LENGTH = 16


def _key() -> str:
    return get_settings().secret_key


def make(purpose: str, *parts: str) -> str:
    body = ".".join(parts)
    return f"{body}.{sign(_key(), f'{purpose}:{body}'.encode())}"


def read(purpose: str, token: str, part_count: int) -> list[str] | None:
    """The token's parts when its signature is valid for this purpose, else None."""
    pieces = token.split(".")
    if len(pieces) != part_count + 1:
        return None
    *parts, signature = pieces
    body = ".".join(parts)
    if not signature_matches(_key(), f"{purpose}:{body}".encode(), signature):
        return None
    return parts


def delivery_token(purpose: str, delivery_id: uuid.UUID) -> str:
    return make(purpose, delivery_id.hex)


def read_delivery_token(purpose: str, token: str) -> uuid.UUID | None:
    parts = read(purpose, token, 1)
    if parts is None:
        return None
    try:
        return uuid.UUID(hex=parts[0])
    except ValueError:
        return None


def click_token(delivery_id: uuid.UUID, position: int) -> str:
    return make("click", delivery_id.hex, str(position))


def read_click_token(token: str) -> tuple[uuid.UUID, int] | None:
    parts = read("click", token, 2)
    if parts is None:
        return None
    try:
        return uuid.UUID(hex=parts[0]), int(parts[1])
    except ValueError:
        return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _short_signature(body: str) -> str:
    digest = hmac.new(_key().encode(), f"short-click:{body}".encode(), hashlib.sha256).digest()
    return _b64(digest)[:SHORT_SIGNATURE_LENGTH]


def short_click_token(delivery_id: uuid.UUID, position: int) -> str:
    """A click token short enough for an SMS (about 40 characters)."""
    body = f"{_b64(delivery_id.bytes)}.{position:x}"
    return f"{body}.{_short_signature(body)}"


def read_short_click_token(token: str) -> tuple[uuid.UUID, int] | None:
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    encoded_id, position, signature = pieces
    body = f"{encoded_id}.{position}"
    if not hmac.compare_digest(_short_signature(body), signature):
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded_id + "==")
        return uuid.UUID(bytes=raw), int(position, 16)
    except ValueError:
        return None
