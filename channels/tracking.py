"""Opens and clicks: recorded once per delivery (and link), sent on as events, with likely
machine opens and clicks (security scanners, prefetchers, privacy proxies) flagged."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from user_agents import parse as parse_user_agent

from channels import engagement
from channels.models import Delivery, DeliveryEvent, TrackedLink
from channels.records import delivery_contact, message_properties, record_event_once
from core.clock import clock

# A pixel fetched this soon after sending was fetched by the receiving gateway, not a reader.
MACHINE_OPEN_WINDOW = timedelta(seconds=5)
MACHINE_CLICK_WINDOW = timedelta(seconds=10)
# Scanners follow every link of a message at once; a person does not.
BURST_WINDOW = timedelta(seconds=2)
SCANNER_MARKERS = (
    "barracuda",
    "mimecast",
    "proofpoint",
    "safelinks",
    "symantec",
    "forcepoint",
    "trendmicro",
    "ironport",
    "fireeye",
    "python-requests",
    "curl/",
    "wget/",
    "go-http-client",
    "headlesschrome",
)
PROGRESS = {"queued": 0, "deferred": 0, "sent": 1, "delivered": 2, "opened": 3, "clicked": 4}


def machine_agent(user_agent: str | None) -> bool:
    if not user_agent or not user_agent.strip():
        return True
    lowered = user_agent.lower()
    # Apple Mail Privacy Protection fetches every pixel with this bare agent, opened or not.
    if user_agent.strip() == "Mozilla/5.0":
        return True
    if any(marker in lowered for marker in SCANNER_MARKERS):
        return True
    return bool(parse_user_agent(user_agent).is_bot)


def _advance(delivery: Delivery, status: str) -> None:
    if PROGRESS.get(delivery.status, -1) >= 1 and PROGRESS[status] > PROGRESS[delivery.status]:
        delivery.status = status


def record_open(session: Session, delivery_id: uuid.UUID, user_agent: str | None) -> None:
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.sent_at is None:
        return
    now = clock.now()
    machine = machine_agent(user_agent) or now - delivery.sent_at < MACHINE_OPEN_WINDOW
    label = "machine" if machine else "human"
    detail = {"user_agent": (user_agent or "")[:300]}
    if not record_event_once(
        session, f"open:{delivery.id}:{label}", delivery.id, "open", machine, detail, now
    ):
        return
    if not machine:
        delivery.opened_at = delivery.opened_at or now
        _advance(delivery, "opened")
    contact = delivery_contact(session, delivery)
    if contact is not None:
        engagement.track(
            session,
            contact,
            "email_opened",
            {**message_properties(delivery), "machine": machine},
            f"{delivery.id}:open:{label}",
        )


def record_click(
    session: Session, delivery_id: uuid.UUID, position: int, user_agent: str | None, head: bool
) -> str | None:
    """Returns the stored URL for this token's link (never a URL taken from the request)."""
    link = session.scalar(
        select(TrackedLink).where(
            TrackedLink.delivery_id == delivery_id, TrackedLink.position == position
        )
    )
    if link is None:
        return None
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.sent_at is None:
        return link.url
    now = clock.now()
    burst = session.scalar(
        select(DeliveryEvent.id)
        .where(
            DeliveryEvent.delivery_id == delivery.id,
            DeliveryEvent.kind == "click",
            DeliveryEvent.occurred_at > now - BURST_WINDOW,
            DeliveryEvent.detail["position"].as_integer() != position,
        )
        .limit(1)
    )
    machine = (
        head
        or machine_agent(user_agent)
        or now - delivery.sent_at < MACHINE_CLICK_WINDOW
        or burst is not None
    )
    label = "machine" if machine else "human"
    detail = {"position": position, "url": link.url, "user_agent": (user_agent or "")[:300]}
    key = f"click:{delivery.id}:{position}:{label}"
    if not record_event_once(session, key, delivery.id, "click", machine, detail, now):
        return link.url
    if not machine:
        delivery.clicked_at = delivery.clicked_at or now
        if delivery.channel == "email":  # a click shows the email was opened
            delivery.opened_at = delivery.opened_at or now
        _advance(delivery, "clicked")
    contact = delivery_contact(session, delivery)
    if contact is not None:
        engagement.track(
            session,
            contact,
            f"{delivery.channel}_clicked",
            {
                **message_properties(delivery),
                "url": link.url,
                "position": position,
                "machine": machine,
            },
            f"{delivery.id}:click:{position}:{label}",
        )
    return link.url
