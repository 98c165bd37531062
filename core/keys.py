"""Admin API keys: created once, shown once, stored only as a hash, each with one role."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.ids import hash_secret, new_secret
from core.models import Base, UUIDPrimaryKey, utcnow

ADMIN_KEY_PREFIX = "nk"


class Role(StrEnum):
    admin = "admin"
    marketer = "marketer"
    manager = "manager"
    rep = "rep"
    finance = "finance"


class ApiKey(UUIDPrimaryKey, Base):
    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)


def create_api_key(session: Session, name: str, role: Role) -> tuple[ApiKey, str]:
    """Returns the stored row and the plain key, which is never stored and never shown again."""
    plain = new_secret(ADMIN_KEY_PREFIX)
    api_key = ApiKey(name=name, role=role.value, key_hash=hash_secret(plain), key_prefix=plain[:10])
    session.add(api_key)
    session.flush()
    return api_key, plain


def find_active_key(session: Session, plain: str) -> ApiKey | None:
    if not plain.startswith(ADMIN_KEY_PREFIX + "_"):
        return None
    return session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_secret(plain), ApiKey.revoked_at.is_(None))
    )
