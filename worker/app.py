"""The Celery app: Redis in production, an embedded file-system broker otherwise."""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.settings import Settings, get_settings
from core.tasks import DEFAULT_QUEUE, ROUTES

TASK_MODULES = [
    "worker.tasks",
    "capture.tasks",
    "channels.tasks",
    "scoring.tasks",
    "handoff.tasks",
    "attribution.tasks",
    "journeys.tasks",
]


# A tick not picked up within a few seconds is dropped, so a busy or starting worker does
# not face a pile of stale ticks; the next tick does the same work.
EVERY_SECOND = {"expires": 5.0}


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    if settings.redis_url:
        # Broker ETAs stay far below this; long waits live in the database (ARCHITECTURE §3).
        return settings.redis_url, {"visibility_timeout": 3600}
    folder = (settings.data_dir / "broker").resolve()
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker_url, transport_options = broker_options(settings)
    app = Celery("nurture", broker=broker_url, include=TASK_MODULES)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_default_queue=DEFAULT_QUEUE,
        task_routes=ROUTES,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule_filename=str((settings.data_dir / "beat-schedule").resolve()),
        beat_schedule={
            "dispatch-change-feed": {
                "task": "core.dispatch_feed",
                "schedule": 1.0,
                "options": EVERY_SECOND,
            },
            "link-form-submissions": {"task": "capture.link_form_submissions", "schedule": 30.0},
            "resume-due-deliveries": {"task": "channels.resume_due", "schedule": 10.0},
            "rebuild-segments": {"task": "journeys.rebuild_segments", "schedule": 900.0},
            "start-date-triggers": {"task": "journeys.start_date_triggers", "schedule": 300.0},
            "advance-journeys": {
                "task": "journeys.schedule",
                "schedule": 1.0,
                "options": EVERY_SECOND,
            },
            "enforce-handoff-sla": {"task": "handoff.enforce_sla", "schedule": 30.0},
            "catch-up-attribution": {"task": "attribution.catch_up", "schedule": 60.0},
            "refit-attribution": {"task": "attribution.refit", "schedule": 3600.0},
            "refresh-predictions": {"task": "scoring.predict_all", "schedule": 3600.0},
            "write-down-score-decay": {"task": "scoring.decay_scores", "schedule": 86400.0},
            "retrain-predictive-model": {"task": "scoring.retrain", "schedule": 86400.0},
        },
    )
    app.set_default()
    return app


celery_app = create_celery()
