"""Sources and their write keys: public keys that can only capture, looked up fast."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from capture.models import Source
from core.db import get_sessionmaker
from core.ids import hash_secret, new_secret

WRITE_KEY_PREFIX = "wk"
_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class SourceInfo:
    id: uuid.UUID
    allowed_origins: tuple[str, ...]
    honor_do_not_track: bool


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def create_source(
    session: Session, name: str, allowed_origins: list[str], honor_do_not_track: bool = False
) -> tuple[Source, str]:
    """Returns the row and the write key (stored only as a hash, like every key)."""
    write_key = new_secret(WRITE_KEY_PREFIX)
    source = Source(
        name=name,
        write_key_hash=hash_secret(write_key),
        write_key_prefix=write_key[:10],
        allowed_origins=[normalize_origin(o) for o in allowed_origins],
        honor_do_not_track=honor_do_not_track,
    )
    session.add(source)
    session.flush()
    return source, write_key


class WriteKeyCache:
    """Write-key → source, cached briefly so a capture request rarely touches the database."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, SourceInfo | None]] = {}

    def lookup(self, write_key: str) -> SourceInfo | None:
        now = time.monotonic()
        hit = self._entries.get(write_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        info = self._load(write_key)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[write_key] = (now + _CACHE_SECONDS, info)
        return info

    def _load(self, write_key: str) -> SourceInfo | None:
        if not write_key.startswith(WRITE_KEY_PREFIX + "_"):
            return None
        with get_sessionmaker()() as session:
            source = session.scalar(
                select(Source).where(
                    Source.write_key_hash == hash_secret(write_key), Source.disabled_at.is_(None)
                )
            )
            if source is None:
                return None
            return SourceInfo(
                id=source.id,
                allowed_origins=tuple(source.allowed_origins or ()),
                honor_do_not_track=source.honor_do_not_track,
            )

    def clear(self) -> None:
        self._entries.clear()


write_keys = WriteKeyCache()
