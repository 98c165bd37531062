"""Identifiers and secrets: ids for rows, random keys, and how keys are hashed at rest."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Iterator


def new_id() -> uuid.UUID:
    return uuid.uuid4()


# The variant (RFC 4122) and version (4) bits of a random id, as uuid.UUID sets them.
_VERSION_4 = (0x8 << 60) | (0x4 << 76)
_RANDOM_BITS = ~((0xC << 60) | (0xF << 76)) & ((1 << 128) - 1)


def random_ids(block: int = 1024) -> Iterator[uuid.UUID]:
    """Endless ids like `new_id`'s, each block of them from one read of the system's random
    source: uuid4 reads it once per id, and each read lets another thread take the GIL."""
    while True:
        data = os.urandom(16 * block)
        for start in range(0, len(data), 16):
            random = int.from_bytes(data[start : start + 16])
            yield uuid.UUID(int=random & _RANDOM_BITS | _VERSION_4)


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def hash_secret(secret: str) -> str:
    # Keys are long random tokens, so a fast keyed hash is enough (no password stretching needed)
    # and keeps per-request lookup cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def sign(key: str, message: bytes) -> str:
    return hmac.digest(key.encode(), message, "sha256").hex()


def signature_matches(key: str, message: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, message), signature)
