"""The one task decorator, and enqueueing after commit (never for state that rolled back)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from celery import Task, shared_task
from sqlalchemy import event
from sqlalchemy.orm import Session

from core.db import session_scope

P = ParamSpec("P")
R = TypeVar("R")

_PENDING_KEY = "nurture_pending_tasks"
_BATCHED_KEY = "nurture_batched_tasks"
DEFAULT_QUEUE = "default"
# Task name → queue, for the Celery app's `task_routes` (Celery deprecates a task's own
# `queue` attribute).
ROUTES: dict[str, dict[str, str]] = {}


class TransientError(Exception):
    """A failure worth retrying (network, provider throttling); anything else is permanent."""


def task(
    name: str, queue: str = DEFAULT_QUEUE, max_retries: int = 5
) -> Callable[[Callable[..., Any]], Task]:
    """Declares a task `fn(session, *ids)`: it runs in its own transaction, acks late, and
    retries TransientError with exponential backoff and jitter."""

    if queue != DEFAULT_QUEUE:
        ROUTES[name] = {"queue": queue}

    def decorate(fn: Callable[..., Any]) -> Task:
        @shared_task(
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            max_retries=max_retries,
        )
        def run(self: Task, *args: Any, **kwargs: Any) -> Any:
            try:
                with session_scope() as session:
                    return fn(session, *args, **kwargs)
            except TransientError as exc:
                delay = min(600, 2 ** (self.request.retries or 0)) + random.uniform(0, 1)
                raise self.retry(exc=exc, countdown=delay) from exc

        return run

    return decorate


def enqueue_after_commit(session: Session, task_obj: Task, *args: Any, **kwargs: Any) -> None:
    session.info.setdefault(_PENDING_KEY, []).append((task_obj, args, kwargs))


def enqueue_in_batches_after_commit(
    session: Session, task_obj: Task, item: Any, batch_size: int
) -> None:
    """`task_obj(items)` after commit, with this transaction's items in lists of up to
    `batch_size`: a journey step that sends 500 messages enqueues 20 tasks, not 500."""
    batches = session.info.setdefault(_BATCHED_KEY, {})
    batches.setdefault(task_obj.name, (task_obj, batch_size, []))[2].append(item)


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    for task_obj, args, kwargs in session.info.pop(_PENDING_KEY, []):
        task_obj.apply_async(args=args, kwargs=kwargs)
    for task_obj, batch_size, items in session.info.pop(_BATCHED_KEY, {}).values():
        for start in range(0, len(items), batch_size):
            task_obj.apply_async(args=(items[start : start + batch_size],))


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, _previous: Any) -> None:
    session.info.pop(_PENDING_KEY, None)
    session.info.pop(_BATCHED_KEY, None)
