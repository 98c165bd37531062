"""Recording what happened to a delivery: statuses, retries with backoff, bounces that suppress
an address, paused channels with an alert, dead letters, and the matching contact events."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from capture.models import Contact
from channels import engagement, policies
from channels.models import (
    ChannelAlert,
    ChannelState,
    DeadLetter,
    Delivery,
    DeliveryEvent,
    Suppression,
)
from channels.outcome import Outcome, Result
from channels.settings import ChannelSettings
from core.clock import clock
from core.db import dialect_insert

log = logging.getLogger(__name__)

PAUSE_RECHECK = timedelta(minutes=15)
MAX_BACKOFF = timedelta(hours=6)
MAX_REASON_LENGTH = 1000
PROVIDERS = {
    "email": "smtp",
    "sms": "aliyun",
    "webhook": "webhook",
    "wecom": "wecom",
    "dingtalk": "dingtalk",
}


def contact_view(contact: Contact) -> dict[str, Any]:
    """The contact as templates and webhooks see it: plain values, no ORM object."""
    return {
        "id": str(contact.id),
        "user_id": contact.user_id,
        "email": contact.email,
        "phone": contact.phone,
        "timezone": contact.timezone,
        "lifecycle_stage": contact.lifecycle_stage,
        "tags": list(contact.tags or []),
        "traits": dict(contact.traits or {}),
    }


def recipient_view(contact: Contact | None, delivery: Delivery) -> dict[str, Any]:
    """What templates see as `contact`: the contact, or only the address of an address send."""
    if contact is not None:
        return contact_view(contact)
    address = delivery.to_address
    return {
        "id": None,
        "email": address if delivery.channel == "email" else None,
        "phone": address if delivery.channel == "sms" else None,
        "traits": {},
    }


def delivery_contact(
    session: Session, delivery: Delivery, *, for_update: bool = False
) -> Contact | None:
    """The contact a delivery went to; None for a message sent to an explicit address."""
    if delivery.contact_id is None:
        return None
    return session.get(Contact, delivery.contact_id, with_for_update=for_update or None)


def backoff(attempts: int, settings: ChannelSettings) -> timedelta:
    base = settings.retry_base_seconds * 2 ** max(0, attempts - 1)
    return min(MAX_BACKOFF, timedelta(seconds=base * random.uniform(0.9, 1.1)))


def channel_paused(session: Session, channel: str) -> bool:
    state = session.get(ChannelState, channel)
    return state is not None and state.paused_at is not None


def pause_channel(session: Session, channel: str, code: str, reason: str) -> None:
    """Stops the channel until an operator resumes it, with one alert per pause."""
    session.execute(
        dialect_insert(session, ChannelState)
        .values(channel=channel)
        .on_conflict_do_nothing(index_elements=["channel"])
    )
    state = session.get(ChannelState, channel, with_for_update=True, populate_existing=True)
    assert state is not None
    if state.paused_at is None:
        state.paused_at, state.pause_code, state.pause_reason = clock.now(), code, reason
        session.add(ChannelAlert(channel=channel, code=code, message=f"{channel} paused: {reason}"))
        log.error("channel %s paused: %s (%s)", channel, reason, code)
    session.flush()


def defer(delivery: Delivery, code: str | None, reason: str | None, until: datetime | None) -> None:
    delivery.status = "deferred"
    delivery.error_code, delivery.error_reason = code, (reason or "")[:MAX_REASON_LENGTH]
    delivery.next_attempt_at = until or clock.now()


def fail(delivery: Delivery, code: str | None, reason: str | None, now: datetime) -> None:
    delivery.status = "failed"
    delivery.error_code, delivery.error_reason = code, (reason or "")[:MAX_REASON_LENGTH]
    delivery.failed_at, delivery.next_attempt_at = now, None


def suppress_address(
    session: Session, channel: str, address: str, reason: str, detail: str
) -> None:
    insert = dialect_insert(session, Suppression)
    session.execute(
        insert.values(
            channel=channel,
            address=address,
            reason=reason,
            detail=detail[:MAX_REASON_LENGTH],
            created_at=clock.now(),
        ).on_conflict_do_nothing(index_elements=["channel", "address"])
    )


def mark_bounced(
    session: Session, delivery: Delivery, contact: Contact | None, outcome: Outcome, hard: bool
) -> None:
    now = clock.now()
    delivery.status, delivery.bounced_at, delivery.next_attempt_at = "bounced", now, None
    delivery.error_code, delivery.error_reason = (
        outcome.code,
        (outcome.reason or "")[:MAX_REASON_LENGTH],
    )
    if delivery.to_address:
        reason = "hard_bounce" if hard else "soft_bounce_limit"
        suppress_address(
            session, delivery.channel, delivery.to_address, reason, outcome.reason or ""
        )
    if contact is not None:
        engagement.track(
            session,
            contact,
            "email_bounced",
            {
                **message_properties(delivery),
                "bounce_type": "hard" if hard else "soft",
                "code": outcome.code,
                "reason": outcome.reason,
            },
            f"{delivery.id}:bounced",
        )


def message_properties(delivery: Delivery) -> dict[str, Any]:
    return {
        "delivery_id": str(delivery.id),
        "channel": delivery.channel,
        "template_id": str(delivery.template_id) if delivery.template_id else None,
        "journey_id": str(delivery.journey_id) if delivery.journey_id else None,
        "enrollment_id": str(delivery.enrollment_id) if delivery.enrollment_id else None,
        "campaign": delivery.campaign,
    }


def record(
    session: Session,
    delivery: Delivery,
    contact: Contact | None,
    outcome: Outcome,
    now: datetime,
    settings: ChannelSettings,
) -> None:
    """Writes a provider outcome onto the delivery (and the suppression list, channel state)."""
    delivery.attempts += 1
    result = outcome.result
    if result in (Result.sent, Result.delivered):
        delivery.status = "delivered" if result is Result.delivered else "sent"
        delivery.sent_at, delivery.next_attempt_at = now, None
        delivery.error_code = delivery.error_reason = None
        if result is Result.delivered:
            delivery.delivered_at = now
        delivery.provider = PROVIDERS[delivery.channel]
        delivery.provider_message_id = outcome.message_id or delivery.provider_message_id
        if contact is not None and delivery.channel in policies.CONSENTED_CHANNELS:
            engagement.track(
                session,
                contact,
                f"{delivery.channel}_sent",
                {**message_properties(delivery), "subject": delivery.subject},
                f"{delivery.id}:sent",
            )
    elif result is Result.defer:
        defer(delivery, outcome.code, outcome.reason, outcome.until or now + timedelta(minutes=1))
    elif result is Result.hard_bounce:
        mark_bounced(session, delivery, contact, outcome, hard=True)
    elif result is Result.soft_bounce:
        if delivery.attempts >= settings.soft_bounce_max_attempts:
            mark_bounced(session, delivery, contact, outcome, hard=False)
        else:
            defer(
                delivery, outcome.code, outcome.reason, now + backoff(delivery.attempts, settings)
            )
    elif result is Result.invalid_address:
        fail(delivery, outcome.code, outcome.reason, now)
        if delivery.to_address:
            suppress_address(
                session,
                delivery.channel,
                delivery.to_address,
                "invalid_number",
                outcome.reason or "",
            )
    elif result is Result.account_problem:
        pause_channel(session, delivery.channel, outcome.code or "account", outcome.reason or "")
        defer(delivery, outcome.code, outcome.reason, now + PAUSE_RECHECK)
    elif result is Result.retry:
        limit = (
            settings.webhook_max_attempts
            if delivery.channel == "webhook"
            else settings.send_max_attempts
        )
        if delivery.attempts >= limit:
            fail(delivery, outcome.code, outcome.reason, now)
            if delivery.channel == "webhook":
                dead_letter(session, delivery, outcome)
        else:
            defer(
                delivery, outcome.code, outcome.reason, now + backoff(delivery.attempts, settings)
            )
    else:
        fail(delivery, outcome.code, outcome.reason, now)


def dead_letter(session: Session, delivery: Delivery, outcome: Outcome) -> None:
    insert = dialect_insert(session, DeadLetter)
    session.execute(
        insert.values(
            delivery_id=delivery.id,
            attempts=delivery.attempts,
            last_error=outcome.reason,
            created_at=clock.now(),
            replayed_at=None,
        ).on_conflict_do_update(
            index_elements=["delivery_id"],
            set_={"attempts": delivery.attempts, "last_error": outcome.reason, "replayed_at": None},
        )
    )
    message = f"webhook delivery {delivery.id} failed after {delivery.attempts} attempts"
    session.add(ChannelAlert(channel="webhook", code="dead_letter", message=message))
    log.error(message)


def record_event_once(
    session: Session,
    dedupe_key: str,
    delivery_id: uuid.UUID | None,
    kind: str,
    machine: bool,
    detail: dict[str, Any],
    now: datetime,
) -> bool:
    """Stores the event unless one with this key exists; True when it is new."""
    insert = dialect_insert(session, DeliveryEvent)
    inserted = session.scalar(
        insert.values(
            dedupe_key=dedupe_key,
            delivery_id=delivery_id,
            kind=kind,
            machine=machine,
            detail=detail,
            occurred_at=now,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(DeliveryEvent.id)
    )
    return inserted is not None
