"""Builds the FastAPI app: every router assembled here, one error shape, OpenAPI at /docs."""

from __future__ import annotations

import gc

from fastapi import FastAPI
from starlette.types import ASGIApp

from api.errors import install_error_handlers
from api.keys_router import router as keys_router
from attribution.router import router as attribution_router
from capture.forms_router import admin_router as forms_admin_router
from capture.forms_router import public_router as forms_public_router
from capture.router import router as capture_admin_router
from capture.snippet_router import router as snippet_router
from capture.tracking_router import CaptureFastPath
from capture.tracking_router import router as tracking_router
from channels.router import router as channels_router
from handoff.router import router as handoff_router
from journeys.router import router as journeys_router
from scoring.router import router as scoring_router
from worker.app import celery_app
from worker.tasks import dispatch_on_commit


def create_server_app() -> ASGIApp:
    """What servers run: the tracking calls go straight to capture, ahead of FastAPI's
    machinery (their routes in the FastAPI app serve the docs and the same handler).
    A request that publishes changes asks for a feed dispatch when it commits, as workers do,
    so journeys, scoring and handoff react within moments rather than at the next beat."""
    dispatch_on_commit()
    app = CaptureFastPath(create_app())
    gc.freeze()  # what is loaded by now lives as long as the server: spare the collector it
    return app


def create_app() -> FastAPI:
    # Tasks queued after commit in a request bind to the current Celery app: it must be ours
    # (Redis or the embedded broker), not Celery's default AMQP app.
    celery_app.set_default()
    app = FastAPI(
        title="Nurture",
        version="0.1.0",
        description="Marketing automation and lead nurturing. Admin API under /api/v1; "
        "Segment-compatible tracking API under /v1.",
        # Not used yet; FastAPI would otherwise probe OpenTelemetry on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.include_router(attribution_router)
    app.include_router(tracking_router)
    app.include_router(capture_admin_router)
    app.include_router(keys_router)
    app.include_router(snippet_router)
    app.include_router(forms_public_router)
    app.include_router(forms_admin_router)
    app.include_router(channels_router)
    app.include_router(scoring_router)
    app.include_router(journeys_router)
    app.include_router(handoff_router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
