"""Many rows in one statement on PostgreSQL: each column travels as one array parameter and
`unnest` turns the arrays back into rows. An executemany sends a Bind and an Execute per row,
and psycopg's per-row work then costs more than the server's; arrays cost one round of each.
The statement goes to psycopg directly, in the session's transaction, with the arrays in
binary form: psycopg writes a text array at three times the cost. It does not flush the
session. Other databases take the rows as an executemany of the same change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert, Update

from core.db import dialect_insert, is_postgres

_DIALECT = postgresql.dialect()


def _unnest(table: Table, names: Sequence[str]) -> str:
    arrays = ", ".join(
        f"CAST(%({name})b AS {table.c[name].type.compile(dialect=_DIALECT)}[])" for name in names
    )
    return f"unnest({arrays}) AS rows_({', '.join(names)})"


class RowsStatement:
    """A change made by a list of dicts: one array statement on PostgreSQL."""

    names: list[str]
    on_postgres: str

    def __call__(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        if is_postgres(session):
            driver = session.connection().connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor:
                cursor.execute(self.on_postgres, _as_arrays(rows, self.names), prepare=True)
        else:
            self.elsewhere(session, rows)

    def elsewhere(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError


class RowsUpdate(RowsStatement):
    """Sets `columns` of the rows whose `key` matches, from a list of dicts (key and columns)."""

    def __init__(self, table: Table, key: str, columns: Sequence[str]) -> None:
        self.names = [key, *columns]
        assignments = ", ".join(f"{name} = rows_.{name}" for name in columns)
        self.on_postgres = (
            f"UPDATE {table.name} SET {assignments} FROM {_unnest(table, self.names)}"
            f" WHERE {table.name}.{key} = rows_.{key}"
        )
        self.statement: Update = (
            update(table)
            .where(table.c[key] == bindparam(f"row_{key}"))
            .values({name: bindparam(f"row_{name}") for name in columns})
        )

    def elsewhere(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        session.execute(self.statement, [{f"row_{n}": row[n] for n in self.names} for row in rows])


class RowsInsert(RowsStatement):
    """Inserts a list of dicts; with `conflict`, a row whose `conflict` columns match an existing
    one is dropped, or replaces that row's `replace` columns when those are named."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        conflict: Sequence[str] = (),
        replace: Sequence[str] = (),
    ) -> None:
        self.names = list(columns)
        self.table, self.conflict, self.replace = table, list(conflict), list(replace)
        on_conflict = ""
        if conflict:
            assignments = ", ".join(f"{name} = EXCLUDED.{name}" for name in replace)
            action = f"DO UPDATE SET {assignments}" if replace else "DO NOTHING"
            on_conflict = f" ON CONFLICT ({', '.join(conflict)}) {action}"
        self.on_postgres = (
            f"INSERT INTO {table.name} ({', '.join(self.names)})"
            f" SELECT * FROM {_unnest(table, self.names)}{on_conflict}"
        )

    def elsewhere(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        session.execute(self._statement(session), [dict(row) for row in rows])

    def _statement(self, session: Session) -> Insert:
        if not self.conflict:
            return insert(self.table)
        statement = dialect_insert(session, self.table)
        if not self.replace:
            return statement.on_conflict_do_nothing(index_elements=self.conflict)
        return statement.on_conflict_do_update(
            index_elements=self.conflict,
            set_={name: statement.excluded[name] for name in self.replace},
        )


def _as_arrays(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in names}
