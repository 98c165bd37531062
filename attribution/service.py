"""Recording conversions: the one entry point handoff (opportunities, won deals) and scoring
(leads, MQLs) call. Recording the same conversion again changes nothing."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from attribution.db_models import Conversion, ConversionKind
from core.db import dialect_insert
from core.models import table_of, utcnow


def record_conversion(
    session: Session,
    contact_id: uuid.UUID,
    kind: ConversionKind | str,
    value_fen: int,
    occurred_at: datetime,
    ref: str = "",
) -> Conversion:
    """Records that the contact converted; `ref` names the deal for opportunities and won deals
    (leads and MQLs happen once per contact and leave it empty). Returns the stored row, which
    is the first one recorded when this conversion was already known."""
    kind = ConversionKind(kind)
    if isinstance(value_fen, bool) or not isinstance(value_fen, int) or value_fen < 0:
        raise ValueError("value_fen must be a whole, non-negative number of fen")
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    session.execute(
        dialect_insert(session, table_of(Conversion))
        .values(
            contact_id=contact_id,
            kind=kind.value,
            value_fen=value_fen,
            occurred_at=occurred_at,
            external_ref=ref,
            recorded_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["contact_id", "kind", "external_ref"])
    )
    return session.scalars(
        select(Conversion).where(
            Conversion.contact_id == contact_id,
            Conversion.kind == kind.value,
            Conversion.external_ref == ref,
        )
    ).one()
