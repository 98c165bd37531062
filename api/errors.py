"""One error shape for every failure: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.headers = headers


def error_body(code: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def error_response(error: ApiError) -> ORJSONResponse:
    return ORJSONResponse(
        error_body(error.code, error.message, error.fields),
        status_code=error.status,
        headers=error.headers,
    )


def field_errors(errors: list[Any]) -> dict[str, str]:
    """Pydantic's error list as {"dotted.field": "message"}, skipping the body/query prefix."""
    fields: dict[str, str] = {}
    for err in errors:
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")]
        fields.setdefault(".".join(loc) or "body", err.get("msg", "invalid"))
    return fields


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> ORJSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> ORJSONResponse:
        fields = field_errors(list(exc.errors()))
        message = "invalid request: " + ", ".join(f"{k}: {v}" for k, v in fields.items())
        return ORJSONResponse(error_body("invalid", message, fields), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        return ORJSONResponse(
            error_body(code.get(exc.status_code, "http_error"), str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> ORJSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return ORJSONResponse(error_body("internal", "internal error"), status_code=500)
