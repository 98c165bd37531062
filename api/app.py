"""Builds the FastAPI app: every router assembled here, one error shape, OpenAPI at /docs."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from api.errors import install_error_handlers
from capture.tracking_router import router as tracking_router


def create_app() -> FastAPI:
    app = FastAPI(
        title="Nurture",
        version="0.1.0",
        description="Marketing automation and lead nurturing. Admin API under /api/v1; "
        "Segment-compatible tracking API under /v1.",
        default_response_class=ORJSONResponse,
    )
    install_error_handlers(app)
    app.include_router(tracking_router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
