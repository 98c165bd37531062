"""Signed tokens in tracking and unsubscribe URLs: an id plus an HMAC, checked in constant time,
so nobody can forge a click, an open or an unsubscribe for someone else."""

from __future__ import annotations

import uuid

from core.ids import sign, signature_matches
from core.settings import get_settings


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
