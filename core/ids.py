"""Identifiers and secrets: ids for rows, random keys, and how keys are hashed at rest."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def hash_secret(secret: str) -> str:
    # Keys are long random tokens, so a fast keyed hash is enough (no password stretching needed)
    # and keeps per-request lookup cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def sign(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def signature_matches(key: str, message: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, message), signature)
