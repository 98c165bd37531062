"""Annotated dependencies every router uses: the session, the caller and role checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.errors import ApiError
from core.db import session_scope
from core.keys import ApiKey, Role, find_active_key


def get_session() -> Iterator[Session]:
    """The request boundary: commits before the response is sent, rolls back on error."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def current_key(request: Request, session: SessionDep) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "unauthorized",
            "an admin API key is required as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    api_key = find_active_key(session, token.strip())
    if api_key is None:
        raise ApiError(401, "unauthorized", "the API key is not valid or was revoked")
    return api_key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


class RequireRole:
    """Allows the named roles (admin always); use as `Depends(RequireRole(Role.marketer))`."""

    def __init__(self, *roles: Role) -> None:
        self.roles = {Role.admin, *roles}

    def __call__(self, api_key: CurrentKey) -> ApiKey:
        if api_key.role not in self.roles:
            allowed = ", ".join(sorted(self.roles))
            raise ApiError(403, "forbidden", f"this action needs one of the roles: {allowed}")
        return api_key


MarketerKey = Annotated[ApiKey, Depends(RequireRole(Role.marketer))]
AdminKey = Annotated[ApiKey, Depends(RequireRole())]
