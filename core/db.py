"""Database engine and session scopes. Only request and task boundaries commit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Column,
    Engine,
    MetaData,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Python's sqlite3 opens transactions lazily on its own; we take control so that
    # BEGIN IMMEDIATE serialises writers instead of failing them with 'database is locked'.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work for tasks and commands: commit on success, roll back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def consistent_reads(session: Session) -> Iterator[Session]:
    """A session whose statements all read one snapshot, for a report made of several queries
    that must add up while background work writes. On PostgreSQL a separate read-only
    REPEATABLE READ transaction (so what `session` has not committed is not in it); SQLite's
    writers are serialised (BEGIN IMMEDIATE), so `session`'s own transaction already is one."""
    if not is_postgres(session):
        yield session
        return
    snapshot = Session(session.get_bind(), expire_on_commit=False)
    try:
        snapshot.connection(
            execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        )
        yield snapshot
    finally:
        snapshot.rollback()
        snapshot.close()


def dialect_insert(session_or_engine: Session | Engine, table: Any) -> Any:
    """INSERT with ON CONFLICT support for whichever database we are on."""
    bind = (
        session_or_engine.get_bind()
        if isinstance(session_or_engine, Session)
        else session_or_engine
    )
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Inserts many rows at once: COPY on PostgreSQL, executemany elsewhere. Every row has the
    same keys; columns left out get their Python-side defaults."""
    if not rows:
        return
    if not is_postgres(session):
        session.execute(insert(table), rows)
        return
    rows = _with_defaults(table, rows)
    columns = list(rows[0])
    json_columns = {name for name in columns if isinstance(table.c[name].type, JSON)}
    copy_rows(
        session,
        table.name,
        columns,
        ([_json_dumps(row[c]) if c in json_columns else row[c] for c in columns] for row in rows),
    )


def insert_new(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    conflict_columns: Sequence[str],
    returning: Sequence[str],
    owner_column: str,
) -> list[Any]:
    """INSERT … ON CONFLICT DO NOTHING for many rows; returns the rows that went in (a row whose
    key a concurrent transaction took first keeps that transaction's `owner_column`)."""
    if not rows:
        return []
    if is_postgres(session):
        return _insert_new_by_copy(session, table, rows, conflict_columns, returning)
    session.execute(dialect_insert(session, table).on_conflict_do_nothing(), rows)
    # INSERT … RETURNING under executemany is slow in SQLAlchemy; read back what went in.
    ours = {tuple(row[c] for c in conflict_columns): row[owner_column] for row in rows}
    key = tuple_(*(table.c[c] for c in conflict_columns))
    stored: list[Any] = []
    keys = list(ours)
    for start in range(0, len(keys), 500):
        found = session.execute(
            select(*(table.c[c] for c in {*returning, *conflict_columns, owner_column})).where(
                key.in_(keys[start : start + 500])
            )
        )
        stored.extend(
            row
            for row in found
            if ours[tuple(getattr(row, c) for c in conflict_columns)] == getattr(row, owner_column)
        )
    return stored


def _insert_new_by_copy(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    conflict_columns: Sequence[str],
    returning: Sequence[str],
) -> list[Any]:
    """COPY into a transaction-local staging table, then one INSERT … SELECT … RETURNING."""
    rows = _with_defaults(table, rows)
    columns = ", ".join(rows[0])
    staging_name = f"staging_{table.name}"
    session.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging_name} ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM {table.name} WITH NO DATA"
        )
    )
    staging = Table(
        staging_name, MetaData(), *(Column(c.name, c.type) for c in table.c if c.name in rows[0])
    )
    bulk_insert(session, staging, rows)
    stored = session.execute(
        text(
            f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {staging_name} "
            f"ON CONFLICT ({', '.join(conflict_columns)}) DO NOTHING "
            f"RETURNING {', '.join(returning)}"
        )
    ).all()
    session.execute(text(f"TRUNCATE {staging_name}"))
    return list(stored)


def bulk_update(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Sets the given columns on many rows keyed by "id" (every row has the same keys).

    On PostgreSQL: COPY into a staging table and one UPDATE … FROM, instead of one UPDATE
    statement per row; elsewhere an executemany."""
    if not rows:
        return
    columns = [name for name in rows[0] if name != "id"]
    if not is_postgres(session):
        session.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({name: bindparam(name) for name in columns}),
            [{"b_id": row["id"], **{name: row[name] for name in columns}} for row in rows],
        )
        return
    staging_name = f"staging_update_{table.name}"
    names = ", ".join(["id", *columns])
    session.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging_name} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM {table.name} WITH NO DATA"
        )
    )
    staging = Table(
        staging_name, MetaData(), *(Column(c.name, c.type) for c in table.c if c.name in rows[0])
    )
    bulk_insert(session, staging, rows)
    # Temp tables get no statistics of their own; without them the planner may scan the
    # whole target table instead of probing its primary key once per staged row.
    session.execute(text(f"ANALYZE {staging_name}"))
    assignments = ", ".join(f"{name} = s.{name}" for name in columns)
    session.execute(
        text(f"UPDATE {table.name} t SET {assignments} FROM {staging_name} s WHERE t.id = s.id")
    )
    session.execute(text(f"TRUNCATE {staging_name}"))


def _with_defaults(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    defaults = {
        column.name: column.default
        for column in table.c
        if column.name not in rows[0] and column.default is not None
    }
    if not defaults:
        return rows
    return [
        {**row, **{name: _default_value(default) for name, default in defaults.items()}}
        for row in rows
    ]


def _default_value(default: Any) -> Any:
    return default.arg(None) if default.is_callable else default.arg


def copy_rows(
    session: Session, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Bulk-loads rows with PostgreSQL's COPY, the fastest way in; JSON values go as text."""
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def plenty_of_work_memory(session: Session) -> None:
    """Lets PostgreSQL hash a whole-population aggregate in memory instead of on disk, and
    run it without JIT: compiling our wide CASE expressions took seconds and saved less."""
    if is_postgres(session):
        session.execute(text("SET LOCAL work_mem = '256MB'; SET LOCAL jit = off"))
