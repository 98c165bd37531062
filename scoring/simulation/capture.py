"""The real capture path for simulated people: Segment messages validated into envelopes, put
on the capture queue and stored by the ingest worker, exactly as a website's would be."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from capture.ingest import drain_queue
from capture.models import Identity
from capture.queue import get_queue
from capture.tracking import envelope_for_single
from core.db import bulk_insert
from core.models import table_of
from core.settings import get_settings
from scoring.models import SimulatedContact
from scoring.simulation.batch import (
    DESKTOP_AGENT,
    MOBILE_AGENT,
    anonymous_id,
    company_group_id,
    page_properties,
    truth_row,
    user_id,
)
from scoring.simulation.process import Activity, Person

ENVELOPES_PER_ENTRY = 500


class CaptureWriter:
    """Sends each chunk of people through the queue, drains it, then records their truth."""

    def __init__(self, run_id: int, seed: int, source_id: uuid.UUID, start: datetime, days: int):
        self.run_id = run_id
        self.seed = seed
        self.source_id = source_id
        self.start = start
        self.days = days

    def when(self, day: float | None) -> datetime | None:
        return None if day is None else self.start + timedelta(days=day)

    def write(self, session: Session, people: Sequence[Person]) -> None:
        settings = get_settings()
        skew = timedelta(seconds=settings.max_clock_skew_seconds)
        envelopes = [envelope for person in people for envelope in self.envelopes(person, skew)]
        queue = get_queue()
        for start in range(0, len(envelopes), ENVELOPES_PER_ENTRY):
            queue.put_sync(orjson.dumps(envelopes[start : start + ENVELOPES_PER_ENTRY]))
        drain_queue(queue)
        anonymous_ids = {anonymous_id(self.seed, p): p for p in people}
        owners = dict(
            session.execute(
                select(Identity.value, Identity.contact_id).where(
                    Identity.kind == "anonymous", Identity.value.in_(list(anonymous_ids))
                )
            ).all()
        )
        bulk_insert(
            session,
            table_of(SimulatedContact),
            [
                truth_row(self.run_id, person, anon, owners.get(anon), self.when)
                for anon, person in anonymous_ids.items()
            ],
        )

    def envelopes(self, person: Person, skew: timedelta) -> list[dict[str, Any]]:
        anon = anonymous_id(self.seed, person)
        uid = user_id(self.seed, person)
        agent = MOBILE_AGENT if person.mobile else DESKTOP_AGENT
        previous_page: dict[int, int] = {}
        out = []
        for number, activity in enumerate(person.activities):
            if activity.at > self.days:
                break
            at = self.when(activity.at)
            assert at is not None
            known = uid is not None and activity.at >= (person.identified_at or 0)
            message: dict[str, Any] = {
                "messageId": f"{anon}-{number}",
                "timestamp": at.isoformat(),
                "userId": uid if known else None,
                "anonymousId": anon if activity.visit is not None else None,
            }
            if message["anonymousId"] is None and message["userId"] is None:
                message["anonymousId"] = anon
            if activity.visit is not None:
                message["context"] = {"userAgent": agent}
            message.update(self.body(person, activity, previous_page))
            meta = {"sourceId": str(self.source_id), "ip": None, "userAgent": None}
            out.append(envelope_for_single(message, activity.kind, at, meta, skew))
        return out

    def body(
        self, person: Person, activity: Activity, previous_page: dict[int, int]
    ) -> dict[str, Any]:
        if activity.kind == "page":
            visit = activity.visit or 0
            props = page_properties(person, activity, previous_page.get(visit))
            previous_page[visit] = activity.page or 0
            context = {"page": props, "userAgent": MOBILE_AGENT if person.mobile else DESKTOP_AGENT}
            return {"name": activity.name, "properties": props, "context": context}
        if activity.kind == "identify":
            return {"traits": activity.properties}
        if activity.kind == "group":
            return {
                "groupId": company_group_id(self.seed, person),
                "traits": activity.properties,
            }
        return {"event": activity.name, "properties": activity.properties}
