"""`consistent_reads`: a report's several queries see one snapshot while others commit."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError

from capture.models import Contact
from core.clock import clock
from core.db import consistent_reads, session_scope
from tests.conftest import Backend


def add_contact() -> None:
    now = clock.now()
    with session_scope() as session:
        session.execute(
            insert(Contact).values(
                is_known=False, traits={}, tags=[], event_counts={}, created_at=now, updated_at=now
            )
        )


def test_reads_see_one_snapshot_on_postgres_and_the_session_itself_on_sqlite(
    backend: Backend,
) -> None:
    add_contact()
    count = select(func.count()).select_from(Contact)
    with session_scope() as session:
        with consistent_reads(session) as snapshot:
            first = snapshot.scalar(count)
            if backend.name == "sqlite":
                # Writers are serialised there: the request's own transaction is the snapshot.
                assert snapshot is session
                return
            add_contact()  # committed by someone else between two of the report's queries
            assert snapshot.scalar(count) == first == 1
            with pytest.raises(DBAPIError, match="read-only"):
                snapshot.execute(insert(Contact).values(is_known=False))
        assert session.scalar(count) == 2  # the request's own session reads what is committed
