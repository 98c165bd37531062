"""Rows written in one array statement: the same rows, NULLs and conflicts as row by row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import insert, select

from capture.models import Contact, Identity
from core.arrays import RowsInsert, RowsUpdate
from core.db import session_scope
from core.models import table_of
from tests.conftest import Backend

IDENTITIES = table_of(Identity)
CONTACTS = table_of(Contact)
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def add_contacts(count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    with session_scope() as session:
        session.execute(
            insert(Contact),
            [{"id": i, "is_known": False, "created_at": NOW, "updated_at": NOW} for i in ids],
        )
    return ids


def test_an_update_sets_each_row_its_own_values_nulls_included(backend: Backend) -> None:
    first, second, untouched = add_contacts(3)
    write = RowsUpdate(CONTACTS, "id", ["email", "timezone"])
    with session_scope() as session:
        write(
            session,
            [
                {"id": first, "email": "ann@example.cn", "timezone": None},
                {"id": second, "email": None, "timezone": "Asia/Shanghai"},
            ],
        )
        write(session, [])
    with session_scope() as session:
        rows = {r.id: (r.email, r.timezone) for r in session.execute(select(CONTACTS))}
    assert rows == {
        first: ("ann@example.cn", None),
        second: (None, "Asia/Shanghai"),
        untouched: (None, None),
    }


def test_an_insert_skips_or_replaces_rows_that_conflict(backend: Backend) -> None:
    owner, other = add_contacts(2)
    columns = ["contact_id", "kind", "value", "created_at"]
    keep_first = RowsInsert(IDENTITIES, columns, conflict=["kind", "value"])
    take_last = RowsInsert(IDENTITIES, columns, conflict=["kind", "value"], replace=["contact_id"])
    row = {"contact_id": owner, "kind": "email", "value": "ann@example.cn", "created_at": NOW}
    with session_scope() as session:
        keep_first(session, [row, {**row, "value": "bo@example.cn"}])
        keep_first(session, [{**row, "contact_id": other}])
    with session_scope() as session:
        owners = dict(session.execute(select(IDENTITIES.c.value, IDENTITIES.c.contact_id)).all())
    assert owners == {"ann@example.cn": owner, "bo@example.cn": owner}

    with session_scope() as session:
        take_last(session, [{**row, "contact_id": other}])
    with session_scope() as session:
        owners = dict(session.execute(select(IDENTITIES.c.value, IDENTITIES.c.contact_id)).all())
    assert owners == {"ann@example.cn": other, "bo@example.cn": owner}
