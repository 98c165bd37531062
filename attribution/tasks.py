"""Attribution's background work: credits for newly recorded conversions, a periodic catch-up
of every run, and the periodic Markov refit. Reports only read what these store."""

from __future__ import annotations

from sqlalchemy.orm import Session

from attribution import credits
from core.tasks import task


@task("attribution.credit_conversions", queue="default", max_retries=3)
def credit_conversions(session: Session, conversion_ids: list[int]) -> None:
    credits.credit_conversions(session, conversion_ids)


@task("attribution.catch_up", queue="default", max_retries=0)
def catch_up(_session: Session) -> None:
    """Each run in a transaction of its own (see `credits.catch_up`)."""
    credits.catch_up()


@task("attribution.refit", queue="default", max_retries=0)
def refit(_session: Session) -> None:
    credits.refit_all()
