"""Periodic plumbing tasks; domain tasks live in their own packages' tasks.py."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import feed
from core.tasks import task


@task("core.dispatch_feed", max_retries=0)
def dispatch_feed(session: Session) -> int:
    return feed.dispatch(session)
