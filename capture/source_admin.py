"""Managing sources from the admin API: list, change origins, rotate the write key, disable.

Every change drops the cached write keys once the transaction commits; other processes see it
within the cache's lifetime (30 seconds).
"""

from __future__ import annotations

import uuid

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from capture.models import Source
from capture.schemas import SourceUpdate
from capture.sources import WRITE_KEY_PREFIX, write_keys
from core.clock import clock
from core.ids import hash_secret, new_secret


def _forget_write_keys_after_commit(session: Session) -> None:
    # Clearing before the commit would let a concurrent capture request cache the old row again.
    event.listen(session, "after_commit", lambda _session: write_keys.clear(), once=True)


def list_sources(session: Session) -> list[Source]:
    return list(session.scalars(select(Source).order_by(Source.created_at, Source.id)))


def get_source(session: Session, source_id: uuid.UUID) -> Source:
    source = session.get(Source, source_id)
    if source is None:
        raise ApiError(404, "not_found", f"source {source_id} does not exist")
    return source


def update_source(session: Session, source_id: uuid.UUID, changes: SourceUpdate) -> Source:
    source = get_source(session, source_id)
    for name, value in changes.model_dump(exclude_unset=True).items():
        if value is None:
            raise ApiError(422, "invalid", f"{name} cannot be null", {name: "cannot be null"})
        setattr(source, name, value)
    source.updated_at = clock.now()
    session.flush()
    _forget_write_keys_after_commit(session)
    return source


def rotate_write_key(session: Session, source_id: uuid.UUID) -> tuple[Source, str]:
    """Replaces the write key; the old one stops working. Returns the new key (shown once)."""
    source = get_source(session, source_id)
    if source.disabled_at is not None:
        raise ApiError(409, "source_disabled", f"source {source_id} is disabled")
    write_key = new_secret(WRITE_KEY_PREFIX)
    source.write_key_hash = hash_secret(write_key)
    source.write_key_prefix = write_key[:10]
    source.updated_at = clock.now()
    session.flush()
    _forget_write_keys_after_commit(session)
    return source, write_key


def disable_source(session: Session, source_id: uuid.UUID) -> None:
    """Its write key stops capturing; the source and everything it captured stay."""
    source = get_source(session, source_id)
    if source.disabled_at is None:
        source.disabled_at = clock.now()
        source.updated_at = source.disabled_at
        session.flush()
    _forget_write_keys_after_commit(session)
