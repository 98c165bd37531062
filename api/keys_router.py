"""Admin API keys (`/api/v1/keys`): create (the key is shown once), list, revoke. Admins only."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.deps import AdminKey, SessionDep
from api.errors import ApiError
from capture.schemas import ApiKeyCreate, ApiKeyRead, ApiKeyWithSecret
from core.clock import clock
from core.keys import ApiKey, Role, create_api_key

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


@router.post("", status_code=201)
def create_key(body: ApiKeyCreate, session: SessionDep, _key: AdminKey) -> ApiKeyWithSecret:
    """Creates a key with one role; the response holds the key, which is never shown again."""
    api_key, plain = create_api_key(session, body.name, body.role)
    return ApiKeyWithSecret(**ApiKeyRead.model_validate(api_key).model_dump(), key=plain)


@router.get("")
def list_keys(session: SessionDep, _key: AdminKey) -> list[ApiKeyRead]:
    """Every key, revoked ones included; only the first characters of each key are kept."""
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))
    return [ApiKeyRead.model_validate(row) for row in rows]


@router.delete("/{key_id}", status_code=204)
def revoke_key(key_id: uuid.UUID, session: SessionDep, _key: AdminKey) -> Response:
    """Revokes a key at once. The last active admin key cannot be revoked (409), so the API
    is never left without an administrator."""
    api_key = session.get(ApiKey, key_id, with_for_update=True)
    if api_key is None:
        raise ApiError(404, "not_found", f"API key {key_id} does not exist")
    if api_key.revoked_at is None:
        if api_key.role == Role.admin and _other_active_admins(session, key_id) == 0:
            raise ApiError(409, "last_admin_key", "this is the last active admin key")
        api_key.revoked_at = clock.now()
        session.flush()
    return Response(status_code=204)


def _other_active_admins(session: Session, key_id: uuid.UUID) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.role == Role.admin, ApiKey.revoked_at.is_(None), ApiKey.id != key_id)
        )
        or 0
    )
