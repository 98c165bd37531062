"""Recording conversions: the one entry point handoff (opportunities, won deals) and scoring
(leads, MQLs) call. Recording the same conversion again changes nothing. A new conversion is
credited in the background once the transaction commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Select, delete, func, literal, select, update
from sqlalchemy.orm import Session

from attribution import tasks
from attribution.credits import STANDARD_RUNS, Level
from attribution.db_models import Conversion, ConversionKind, Credit, CreditRun
from core.db import dialect_insert
from core.models import UTCDateTime, table_of, utcnow
from core.tasks import enqueue_after_commit

MILESTONES = (ConversionKind.lead.value, ConversionKind.mql.value)
# Above this many new conversions in one go (a bulk rescore), the catch-up beat credits them
# rather than one task carrying every id.
MOST_IDS_PER_TASK = 5000


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
    inserted = session.execute(
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
        .returning(table_of(Conversion).c.id)
    ).scalar_one_or_none()
    if inserted is not None:
        enqueue_after_commit(session, tasks.credit_conversions, [inserted])
    return session.scalars(
        select(Conversion).where(
            Conversion.contact_id == contact_id,
            Conversion.kind == kind.value,
            Conversion.external_ref == ref,
        )
    ).one()


def record_milestones(session: Session, reached: Select[uuid.UUID, str, datetime]) -> int:
    """Records a `lead` or `mql` conversion (worth nothing; reports count them) for each row of
    `reached`, a SELECT of (contact_id, stage, occurred_at) such as lifecycle transitions; rows
    for other stages are ignored, and a contact becomes a lead or an MQL once. Runs as one
    INSERT … SELECT, so a bulk rescore records its milestones without loading them. Returns how
    many conversions were new."""
    rows = reached.subquery()
    contact_id, stage, occurred_at = rows.c
    now = utcnow()
    new_ids = session.scalars(
        dialect_insert(session, table_of(Conversion))
        .from_select(
            ["contact_id", "kind", "value_fen", "occurred_at", "external_ref", "recorded_at"],
            select(
                contact_id,
                stage,
                literal(0),
                occurred_at,
                literal(""),
                literal(now, UTCDateTime()),
            ).where(stage.in_(MILESTONES)),
        )
        .on_conflict_do_nothing(index_elements=["contact_id", "kind", "external_ref"])
        .returning(table_of(Conversion).c.id)
    ).all()
    if 0 < len(new_ids) <= MOST_IDS_PER_TASK:
        enqueue_after_commit(session, tasks.credit_conversions, list(new_ids))
    return len(new_ids)


def follow_merge(session: Session, merged: uuid.UUID, into: uuid.UUID) -> None:
    """Moves a merged contact's conversions to the contact it was merged into (its touches
    moved there too). A milestone both had is kept once, the earlier one."""
    conversions = table_of(Conversion)
    mine, theirs = conversions.alias("mine"), conversions.alias("theirs")
    same = (
        (theirs.c.contact_id == into)
        & (theirs.c.kind == mine.c.kind)
        & (theirs.c.external_ref == mine.c.external_ref)
    )
    earlier = session.execute(
        select(mine.c.id, theirs.c.id).where(
            mine.c.contact_id == merged, same, mine.c.occurred_at < theirs.c.occurred_at
        )
    ).all()
    later_twins = [their_id for _, their_id in earlier]
    if later_twins:
        session.execute(delete(conversions).where(conversions.c.id.in_(later_twins)))
    session.execute(
        delete(conversions).where(
            conversions.c.contact_id == merged,
            select(theirs.c.id)
            .where(
                theirs.c.contact_id == into,
                theirs.c.kind == conversions.c.kind,
                theirs.c.external_ref == conversions.c.external_ref,
            )
            .exists(),
        )
    )
    session.execute(
        update(conversions).where(conversions.c.contact_id == merged).values(contact_id=into)
    )


@dataclass(frozen=True)
class ChannelCredit:
    """What one channel (and campaign) earned from one contact's conversions, per model, as
    stored by the background: fen of their opportunities' pipeline and of their won revenue,
    and how many of the contact's touches on it led to a credited conversion."""

    channel: str
    campaign: str | None
    touches: int
    pipeline_fen: dict[str, int]
    revenue_fen: dict[str, int]


def channel_credits_for_contact(session: Session, contact_id: uuid.UUID) -> list[ChannelCredit]:
    """The contact's credited channels and campaigns under every model (default parameters,
    Markov and Shapley keyed by channel), most revenue and pipeline first. Conversions the
    background has not credited yet are not in it."""
    models = {
        parameters.key: parameters.model.value
        for parameters in STANDARD_RUNS
        if parameters.level is Level.channel
    }
    rows = session.execute(
        select(
            CreditRun.parameters,
            Credit.channel,
            Credit.campaign,
            Credit.kind,
            func.sum(Credit.credit_fen),
            func.count(func.distinct(Credit.touch_ref)),
        )
        .join(CreditRun, CreditRun.id == Credit.run_id)
        .join(Conversion, Conversion.id == Credit.conversion_id)
        .where(Conversion.contact_id == contact_id, CreditRun.parameters.in_(models))
        .group_by(CreditRun.parameters, Credit.channel, Credit.campaign, Credit.kind)
    )
    found: dict[tuple[str, str | None], ChannelCredit] = {}
    for parameters, channel, campaign, kind, fen, touches in rows:
        entry = found.setdefault(
            (channel, campaign),
            ChannelCredit(
                channel,
                campaign,
                0,
                dict.fromkeys(models.values(), 0),
                dict.fromkeys(models.values(), 0),
            ),
        )
        if kind == ConversionKind.opportunity.value:
            entry.pipeline_fen[models[parameters]] += int(fen or 0)
        elif kind == ConversionKind.won.value:
            entry.revenue_fen[models[parameters]] += int(fen or 0)
        if touches > entry.touches:
            found[(channel, campaign)] = replace(entry, touches=int(touches))
    return sorted(
        found.values(),
        key=lambda c: (-max(c.revenue_fen.values()), -max(c.pipeline_fen.values()), c.channel),
    )
