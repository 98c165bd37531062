"""The claim-before-send ledger (SendClaim rows) of a run of sends: reserved with the run's
deliveries, each message claimed in its own commit just before its provider call and the answer
noted just after, then released when the run records the batch onto its deliveries.

A claim or note is one statement committed on a connection of the run's own: on PostgreSQL the
thread's held autocommit connection (one round trip, no pool checkout or pre-ping per task) and,
the table being UNLOGGED, without waiting for the disk. What a stopped run left behind says, per
message: never claimed (safe to send), claimed with an answer (record it), or claimed without
one (may have gone out)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Row,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from channels.models import SendClaim
from channels.outcome import Outcome, Result
from core.arrays import RowsInsert
from core.db import is_postgres
from core.models import table_of

CLAIMS = table_of(SendClaim)
WRITE_CLAIMS = RowsInsert(CLAIMS, ["delivery_id", "claimed_at"])


def reserve(
    session: Session, delivery_ids: Collection[uuid.UUID], claimed_at: datetime | None = None
) -> None:
    """Ledger rows for a run's messages, written in the transaction that marks them sending
    (already claimed when one provider call carries them all, as a robot post does)."""
    WRITE_CLAIMS(session, [{"delivery_id": d, "claimed_at": claimed_at} for d in delivery_ids])


def release(session: Session, delivery_ids: Collection[uuid.UUID]) -> None:
    """Drops the rows of messages whose outcome is now on their deliveries."""
    if delivery_ids:
        session.execute(delete(CLAIMS).where(CLAIMS.c.delivery_id.in_(delivery_ids)))


def _note_values(outcome: Outcome) -> dict[str, Any]:
    return {
        "result": outcome.result.value,
        "code": outcome.code,
        "reason": outcome.reason,
        "message_id": outcome.message_id,
        "until": outcome.until,
    }


NOTE = (
    update(CLAIMS)
    .where(CLAIMS.c.delivery_id == bindparam("noted_id"))
    .values({name: bindparam(f"noted_{name}") for name in _note_values(Outcome(Result.sent))})
)
CLAIM = (
    update(CLAIMS)
    .where(CLAIMS.c.delivery_id == bindparam("claimed_id"), CLAIMS.c.claimed_at.is_(None))
    .values(claimed_at=bindparam("claimed_time"))
)
# PostgreSQL notes the last answer and claims the next message in one statement.
NOTE_AND_CLAIM = CLAIM.add_cte(NOTE.cte("noted"))


def _driver_sql(statement: Update) -> str:
    return str(statement.compile(dialect=PGDialect_psycopg()))


# A run makes one claim per message: on PostgreSQL it goes to psycopg directly, as a prepared
# statement, since SQLAlchemy's work per execution costs more than the server's for this one.
NOTE_SQL, CLAIM_SQL, NOTE_AND_CLAIM_SQL = map(_driver_sql, (NOTE, CLAIM, NOTE_AND_CLAIM))


class _Held(threading.local):
    connection: Connection | None = None


_held = _Held()
# Connections a forked child inherited: closing one (or letting it be collected back into the
# pool) would touch the parent's socket, so they are kept and never used.
_inherited: list[_Held] = []


def _forget_after_fork() -> None:
    global _held
    _inherited.append(_held)
    _held = _Held()


os.register_at_fork(after_in_child=_forget_after_fork)


def held_connection(engine: Engine) -> Connection:
    """This thread's autocommit connection to PostgreSQL, kept from task to task: most tasks
    only read their delivery's state, and a pool checkout with its pre-ping would cost more."""
    connection = _held.connection
    if connection is None or connection.engine is not engine or connection.invalidated:
        if connection is not None:
            connection.close()
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        _held.connection = connection
    return connection


def read_rows(session: Session, statement: Executable, params: dict[str, Any]) -> list[Row[Any]]:
    """The rows of a read that needs no transaction; on PostgreSQL on the held connection,
    tried again on a new one when the held one was found dropped (after a server restart)."""
    if not is_postgres(session):
        return list(session.execute(statement, params))
    engine = session.get_bind().engine
    try:
        return list(held_connection(engine).execute(statement, params))
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return list(held_connection(engine).execute(statement, params))


class Ledger:
    """One run's claims and notes, each committed at once. A note goes with the next claim
    (or at `close`): the claim follows the answer immediately, and it saves a round trip."""

    def __init__(self, session: Session) -> None:
        engine = session.get_bind().engine
        self.autocommit = is_postgres(session)
        self.connection: Connection = (
            held_connection(engine) if self.autocommit else engine.connect()
        )
        self.cursor: Any = (
            self.connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            if self.autocommit
            else None
        )
        self.pending: dict[str, Any] | None = None

    def claim(self, delivery_id: uuid.UUID, now: datetime) -> bool:
        """Durably marks the message as going out now; False when its reservation was taken
        back meanwhile (its run was thought dead and the message queued again)."""
        claim = {"claimed_id": delivery_id, "claimed_time": now}
        if self.pending is not None and self.autocommit:
            claimed = self._execute(NOTE_AND_CLAIM, NOTE_AND_CLAIM_SQL, {**self.pending, **claim})
            self.pending = None
        else:
            self._write_note()
            claimed = self._execute(CLAIM, CLAIM_SQL, claim)
        self._commit()
        return claimed > 0

    def note(self, delivery_id: uuid.UUID, outcome: Outcome) -> None:
        """Keeps the provider's answer, so a run stopped before recording it loses nothing."""
        self._write_note()
        self.pending = {
            "noted_id": delivery_id,
            **{f"noted_{name}": value for name, value in _note_values(outcome).items()},
        }

    def close(self) -> None:
        self._write_note()
        if self.cursor is not None:
            self.cursor.close()
        if not self.autocommit:
            self.connection.commit()
            self.connection.close()

    def _write_note(self) -> None:
        if self.pending is not None:
            self._execute(NOTE, NOTE_SQL, self.pending)
            self.pending = None

    def _execute(self, statement: Executable, driver_sql: str, params: dict[str, Any]) -> int:
        """The number of rows the statement changed."""
        if self.cursor is None:
            return int(self.connection.execute(statement, params).rowcount)
        self.cursor.execute(driver_sql, params, prepare=True)
        return int(self.cursor.rowcount)

    def _commit(self) -> None:
        if not self.autocommit:
            self.connection.commit()


def left_behind(session: Session, delivery_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """The ledger rows of these deliveries (none for a run whose rows a database crash took)."""
    if not delivery_ids:
        return {}
    rows = session.execute(select(CLAIMS).where(CLAIMS.c.delivery_id.in_(delivery_ids)))
    return {row.delivery_id: row for row in rows}


def noted_outcome(row: Row[Any]) -> Outcome | None:
    if row.result is None:
        return None
    return Outcome(Result(row.result), row.code, row.reason, row.message_id, row.until)
