"""Periodic plumbing tasks; domain tasks live in their own packages' tasks.py."""

from __future__ import annotations

from functools import lru_cache

import redis
from celery import signals
from sqlalchemy.orm import Session

from core import feed
from core.settings import get_settings
from core.tasks import task
from worker.app import celery_app

# Longer than a dispatch takes to start; if a requested dispatch is lost the beat covers it.
DISPATCH_REQUEST_SECONDS = 10


@task("core.dispatch_feed", max_retries=0)
def dispatch_feed(_session: Session) -> int:
    """Hands every consumer its new changes, each consumer in a transaction of its own."""
    forget_dispatch_request()
    return feed.dispatch_each()


def _redis() -> redis.Redis | None:
    url = get_settings().redis_url
    return _client(url) if url else None


@lru_cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def dispatch_request_key() -> str:
    return f"{get_settings().capture_stream}:dispatch-requested"


def request_dispatch() -> None:
    """Enqueues a dispatch unless one is already waiting to start, so a burst of commits
    enqueues one. A dispatch clears the request before it reads, so a commit that lands while
    it runs asks for the next one."""
    client = _redis()
    if client is not None and not client.set(
        dispatch_request_key(), 1, nx=True, ex=DISPATCH_REQUEST_SECONDS
    ):
        return
    celery_app.tasks[dispatch_feed.name].apply_async()


def forget_dispatch_request() -> None:
    client = _redis()
    if client is not None:
        client.delete(dispatch_request_key())


def dispatch_on_commit() -> None:
    """Makes each commit of this process that published changes ask for a dispatch (worker,
    ingest and server processes; not a test process, which dispatches when it chooses)."""
    feed.on_commit_dispatch(request_dispatch)


@signals.worker_init.connect
@signals.worker_process_init.connect
def _in_worker_processes(**_kwargs: object) -> None:
    dispatch_on_commit()
