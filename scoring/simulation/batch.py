"""The batch equivalent of the capture path: writes simulated people straight into the tables
ingest fills (contacts, identities, companies, visits, events), with the columns ingest would
derive, so 100,000 people load in minutes (COPY on PostgreSQL)."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from capture.enrichment import DeviceInfo, Touch, parse_user_agent, touch_for
from capture.models import Company, Contact, Event, Identity, Visit
from core.clock import clock
from core.db import bulk_insert
from core.models import table_of
from scoring.models import SimulatedContact
from scoring.simulation import world
from scoring.simulation.process import Activity, Person
from scoring.simulation.world import CAMPAIGNS, PAGES, SITE

DESKTOP_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
MOBILE_AGENT = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.49(0x18003130) NetType/WIFI"
)


def anonymous_id(seed: int, person: Person) -> str:
    return f"sim{seed}-{person.index:07d}"


def user_id(seed: int, person: Person) -> str | None:
    return f"sim{seed}-user-{person.index:07d}" if person.identified_at is not None else None


def company_group_id(seed: int, person: Person) -> str:
    return f"sim{seed}-co-{person.company.index}"


def landing_url(campaign_index: int, page_index: int) -> str:
    campaign = CAMPAIGNS[campaign_index]
    url = SITE + PAGES[page_index].path
    if campaign.utm_source:
        url += (
            f"?utm_source={campaign.utm_source}&utm_medium={campaign.utm_medium}"
            f"&utm_campaign={campaign.name}"
        )
    return url


@lru_cache(maxsize=64)
def campaign_touch(campaign_index: int, page_index: int) -> Touch:
    return touch_for(landing_url(campaign_index, page_index), CAMPAIGNS[campaign_index].referrer)


@lru_cache(maxsize=4)
def device(user_agent: str) -> DeviceInfo:
    return parse_user_agent(user_agent)


def page_properties(
    person: Person, activity: Activity, previous_page: int | None
) -> dict[str, Any]:
    """What the site's snippet sends with a page view: the landing page of a visit carries the
    campaign's UTM parameters and the outside referrer; later pages refer to the previous one."""
    assert activity.page is not None and activity.visit is not None
    page = PAGES[activity.page]
    if previous_page is None:
        campaign = person.visits[activity.visit].campaign
        url = landing_url(campaign, activity.page)
        referrer = CAMPAIGNS[campaign].referrer
    else:
        url, referrer = SITE + page.path, SITE + PAGES[previous_page].path
    return {"path": page.path, "url": url, "referrer": referrer, "title": page.name}


class BatchWriter:
    """Writes people chunk by chunk; ids come from a seeded generator, so a seed reproduces them."""

    def __init__(self, run_id: int, seed: int, source_id: uuid.UUID, start: datetime, days: int):
        self.run_id = run_id
        self.seed = seed
        self.source_id = source_id
        self.start = start
        self.days = days
        self.ids = random.Random(seed ^ 0x1D5)
        self.company_ids: dict[int, uuid.UUID] = {}

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=self.ids.getrandbits(128), version=4)

    def when(self, day: float | None) -> datetime | None:
        return None if day is None else self.start + timedelta(days=day)

    def write(self, session: Session, people: Sequence[Person]) -> None:
        rows: dict[str, list[dict[str, Any]]] = {
            "companies": [],
            "contacts": [],
            "identities": [],
            "visits": [],
            "events": [],
            "truth": [],
        }
        now = clock.now()
        for person in people:
            self.person_rows(person, rows, now)
        bulk_insert(session, table_of(Company), rows["companies"])
        bulk_insert(session, table_of(Contact), rows["contacts"])
        bulk_insert(session, table_of(Identity), rows["identities"])
        bulk_insert(session, table_of(Visit), rows["visits"])
        bulk_insert(session, table_of(Event), rows["events"])
        bulk_insert(session, table_of(SimulatedContact), rows["truth"])

    def person_rows(self, person: Person, rows: dict[str, list[dict[str, Any]]], now: datetime):
        contact_id = self.new_id()
        anon = anonymous_id(self.seed, person)
        uid = user_id(self.seed, person)
        agent = MOBILE_AGENT if person.mobile else DESKTOP_AGENT
        info = device(agent)
        seen = [a for a in person.activities if a.at <= self.days]
        known = person.identified_at is not None and person.identified_at <= self.days

        company_id = None
        if known:
            company_id = self.company_ids.get(person.company.index)
            if company_id is None:
                company_id = self.company_ids[person.company.index] = self.new_id()
                rows["companies"].append(
                    {
                        "id": company_id,
                        "group_id": company_group_id(self.seed, person),
                        "name": person.company.name,
                        "traits": person.company.traits(),
                        "created_at": now,
                        "updated_at": now,
                    }
                )

        visit_ids: dict[int, uuid.UUID] = {}
        visit_rows: dict[int, dict[str, Any]] = {}
        touches: list[tuple[datetime, Touch]] = []
        counts: Counter[str] = Counter()
        page_views = 0
        previous_page: dict[int, int] = {}
        for number, activity in enumerate(seen):
            at = self.when(activity.at)
            assert at is not None
            props = activity.properties
            url = path = referrer = channel = None
            visit_id = None
            if activity.visit is not None:
                visit_id = visit_ids.get(activity.visit)
                if visit_id is None:
                    visit_id = visit_ids[activity.visit] = self.new_id()
                    campaign = person.visits[activity.visit].campaign
                    touch = campaign_touch(campaign, activity.page or 0)
                    touches.append((at, touch))
                    visit_rows[activity.visit] = {
                        "id": visit_id,
                        "contact_id": contact_id,
                        "source_id": self.source_id,
                        "started_at": at,
                        "last_event_at": at,
                        "channel": touch.channel,
                        "utm_source": touch.source,
                        "utm_medium": touch.medium,
                        "utm_campaign": touch.campaign,
                        "utm_term": None,
                        "utm_content": None,
                        "click_id_kind": None,
                        "click_id": None,
                        "landing_url": landing_url(campaign, activity.page or 0),
                        "referrer": CAMPAIGNS[campaign].referrer,
                        "page_views": 0,
                        "event_count": 0,
                    }
                visit = visit_rows[activity.visit]
                visit["last_event_at"] = at
                visit["event_count"] += 1
                channel = visit["channel"]
            if activity.kind == "page":
                props = page_properties(person, activity, previous_page.get(activity.visit or 0))
                previous_page[activity.visit or 0] = activity.page or 0
                url, path, referrer = props["url"], props["path"], props["referrer"]
                visit_rows[activity.visit or 0]["page_views"] += 1
                page_views += 1
            elif activity.kind == "track" and activity.name:
                counts[activity.name] += 1
            after_identify = known and activity.at >= (person.identified_at or 0)
            rows["events"].append(
                {
                    "source_id": self.source_id,
                    "message_id": f"{anon}-{number}",
                    "contact_id": contact_id,
                    "type": activity.kind,
                    "name": activity.name,
                    "anonymous_id": anon if activity.visit is not None else None,
                    "user_id": uid if after_identify else None,
                    "properties": props,
                    "context": {"userAgent": agent} if activity.visit is not None else {},
                    "timestamp": at,
                    "original_timestamp": at,
                    "received_at": at,
                    "visit_id": visit_id,
                    "url": url,
                    "path": path,
                    "referrer": referrer,
                    "channel": channel,
                    "device_type": info.device_type if activity.visit is not None else None,
                    "os": info.os if activity.visit is not None else None,
                    "browser": info.browser if activity.visit is not None else None,
                    "ip": None,
                }
            )
        rows["visits"].extend(visit_rows.values())

        first_touch, last_touch = touches[0], touches[-1]
        traits = (
            {
                "email": person.email,
                "name": person.name,
                "title": world.TITLES[person.title].name,
            }
            if known
            else {}
        )
        rows["contacts"].append(
            {
                "id": contact_id,
                "user_id": uid if known else None,
                "email": person.email if known else None,
                "phone": None,
                "is_known": known,
                "traits": traits,
                "tags": [],
                "company_id": company_id,
                "timezone": "Asia/Shanghai",
                "first_seen_at": self.when(seen[0].at),
                "last_seen_at": self.when(seen[-1].at),
                **touch_columns("first_touch", *first_touch),
                **touch_columns("last_touch", *last_touch),
                "page_views": page_views,
                "event_counts": dict(counts),
                "lifecycle_stage": "subscriber" if known else None,
                "email_consent": "granted" if known else "unknown",
                "sms_consent": "unknown",
                "email_unsubscribed": person.unsubscribed and known,
                "sms_unsubscribed": False,
                "suppressed": False,
                "merged_into_id": None,
                "created_at": now,
                "updated_at": now,
            }
        )
        rows["identities"].append(identity(contact_id, "anonymous", anon, now))
        if known:
            assert uid is not None and person.email is not None
            rows["identities"].append(identity(contact_id, "user_id", uid, now))
            rows["identities"].append(identity(contact_id, "email", person.email, now))
        rows["truth"].append(truth_row(self.run_id, person, anon, contact_id, self.when))


def identity(contact_id: uuid.UUID, kind: str, value: str, now: datetime) -> dict[str, Any]:
    return {"contact_id": contact_id, "kind": kind, "value": value, "created_at": now}


def touch_columns(prefix: str, at: datetime, touch: Touch) -> dict[str, Any]:
    return {
        f"{prefix}_at": at,
        f"{prefix}_channel": touch.channel,
        f"{prefix}_source": touch.source,
        f"{prefix}_medium": touch.medium,
        f"{prefix}_campaign": touch.campaign,
    }


def truth_row(
    run_id: int, person: Person, anon: str, contact_id: uuid.UUID | None, when: Any
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "person": person.index,
        "anonymous_id": anon,
        "contact_id": contact_id,
        "intent": person.intent,
        "fit_log_odds": person.fit_log_odds,
        "true_probability": person.true_probability,
        "first_channel": person.first_channel,
        "identified_at": when(person.identified_at),
        "converted": person.converted,
        "converted_at": when(person.converted_at),
        "won": person.won,
        "won_at": when(person.closed_at) if person.won else None,
        "revenue_cny": person.revenue_cny,
    }
