"""The claim-before-send ledger (SendClaim rows) of a run of sends: reserved with the run's
deliveries, each message claimed in its own commit just before its provider call and the answer
noted just after, then released when the run records the batch onto its deliveries.

A claim or note is one statement committed on a connection of the run's own, in autocommit on
PostgreSQL (one round trip, no re-checked pooled connection) and, the table being UNLOGGED,
without waiting for the disk. What a stopped run left behind says, per message: never claimed
(safe to send), claimed with an answer (record it), or claimed without one (may have gone out)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from channels.models import SendClaim
from channels.outcome import Outcome, Result
from core.db import is_postgres
from core.models import table_of

CLAIMS = table_of(SendClaim)


def reserve(
    session: Session, delivery_ids: Collection[uuid.UUID], claimed_at: datetime | None = None
) -> None:
    """Ledger rows for a run's messages, written in the transaction that marks them sending
    (already claimed when one provider call carries them all, as a robot post does)."""
    if delivery_ids:
        session.execute(
            insert(CLAIMS), [{"delivery_id": d, "claimed_at": claimed_at} for d in delivery_ids]
        )


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


class Ledger:
    """One run's claims and notes, each committed at once. A note goes with the next claim
    (or at `close`): the claim follows the answer immediately, and it saves a round trip."""

    def __init__(self, session: Session) -> None:
        connection = session.get_bind().engine.connect()
        self.autocommit = is_postgres(session)
        if self.autocommit:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        self.connection: Connection = connection
        self.pending: dict[str, Any] | None = None

    def claim(self, delivery_id: uuid.UUID, now: datetime) -> bool:
        """Durably marks the message as going out now; False when its reservation was taken
        back meanwhile (its run was thought dead and the message queued again)."""
        claim = {"claimed_id": delivery_id, "claimed_time": now}
        if self.pending is not None and self.autocommit:
            claimed = self.connection.execute(NOTE_AND_CLAIM, {**self.pending, **claim})
            self.pending = None
        else:
            self._write_note()
            claimed = self.connection.execute(CLAIM, claim)
        self._commit()
        return bool(claimed.rowcount)

    def note(self, delivery_id: uuid.UUID, outcome: Outcome) -> None:
        """Keeps the provider's answer, so a run stopped before recording it loses nothing."""
        self._write_note()
        self.pending = {
            "noted_id": delivery_id,
            **{f"noted_{name}": value for name, value in _note_values(outcome).items()},
        }

    def close(self) -> None:
        self._write_note()
        self._commit()
        self.connection.close()

    def _write_note(self) -> None:
        if self.pending is not None:
            self.connection.execute(NOTE, self.pending)
            self.pending = None

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
