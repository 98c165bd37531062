"""What providers report later: email bounces and complaints (generic JSON), Aliyun SMS
delivery receipts and uplink replies; each recorded once, however often it is pushed."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from capture.identity import normalize_email, normalize_phone
from capture.models import Contact
from channels import engagement, unsubscribe
from channels.models import Delivery, DeliveryEvent
from channels.outcome import Outcome, Result
from channels.records import (
    delivery_contact,
    mark_bounced,
    message_properties,
    record_event_once,
    suppress_address,
)
from channels.schemas import EmailFeedback, SmsReply, SmsReport
from channels.settings import get_channel_settings
from core.clock import clock

UNSUBSCRIBE_REPLIES = frozenset({"R", "T", "TD", "N", "退订", "取消", "STOP", "UNSUBSCRIBE"})
SOFT_BOUNCE_PERIOD = timedelta(days=30)


def _find_delivery(
    session: Session, delivery_id: str | uuid.UUID | None, provider_message_id: str | None
) -> Delivery | None:
    if delivery_id:
        try:
            found = session.get(Delivery, uuid.UUID(str(delivery_id)), with_for_update=True)
        except ValueError:
            found = None
        if found is not None:
            return found
    if provider_message_id:
        return session.scalar(
            select(Delivery)
            .where(Delivery.provider_message_id == provider_message_id)
            .with_for_update()
        )
    return None


def email_feedback(session: Session, report: EmailFeedback) -> None:
    address = normalize_email(report.email)
    if address is None:
        return
    delivery = _find_delivery(session, report.delivery_id, report.message_id)
    now = clock.now()
    key = f"{report.type}:{address}:{report.message_id or report.delivery_id or now.isoformat()}"
    detail = {"code": report.code, "reason": report.reason, "bounce_type": report.bounce_type}
    if not record_event_once(
        session, key, delivery.id if delivery else None, report.type, False, detail, now
    ):
        return
    reason = report.reason or report.type
    if report.type == "complaint":
        suppress_address(session, "email", address, "complaint", reason)
        for contact in session.scalars(select(Contact).where(Contact.email == address)):
            unsubscribe.set_subscription(
                session,
                contact,
                "email",
                False,
                "complaint",
                f"complaint:{address}:{contact.id}",
                delivery,
            )
        return
    outcome = Outcome(Result.hard_bounce, report.code or "bounce", reason)
    if report.bounce_type == "soft":
        soft_bounces = session.scalar(
            select(func.count()).where(
                DeliveryEvent.kind == "bounce",
                DeliveryEvent.detail["bounce_type"].as_string() == "soft",
                DeliveryEvent.dedupe_key.like(f"bounce:{address}:%"),
                DeliveryEvent.occurred_at > now - SOFT_BOUNCE_PERIOD,
            )
        )
        if (soft_bounces or 0) < get_channel_settings().soft_bounce_max_attempts:
            return
        outcome = Outcome(Result.soft_bounce, report.code or "soft_bounce", reason)
    if delivery is not None and delivery.channel == "email":
        delivery.to_address = delivery.to_address or address
        owner = delivery_contact(session, delivery)
        mark_bounced(session, delivery, owner, outcome, hard=report.bounce_type == "hard")
    else:
        reason_code = "hard_bounce" if report.bounce_type == "hard" else "soft_bounce_limit"
        suppress_address(session, "email", address, reason_code, reason)


def sms_report(session: Session, report: SmsReport) -> None:
    phone = normalize_phone(report.phone_number)
    key = f"sms-report:{report.biz_id}:{phone or report.phone_number}"
    delivery = _find_delivery(session, report.out_id, report.biz_id)
    detail = report.model_dump()
    now = clock.now()
    if not record_event_once(
        session, key, delivery.id if delivery else None, "receipt", False, detail, now
    ):
        return
    if delivery is None or delivery.channel != "sms":
        return
    delivery.provider_message_id = delivery.provider_message_id or report.biz_id
    contact = delivery_contact(session, delivery)
    if report.success:
        delivery.delivered_at = now
        if delivery.status == "sent":
            delivery.status = "delivered"
        name = "sms_delivered"
    else:
        delivery.status, delivery.failed_at = "failed", now
        delivery.error_code = report.err_code or "undelivered"
        delivery.error_reason = report.err_msg or "Aliyun reports the message was not delivered"
        name = "sms_failed"
    if contact is not None:
        engagement.track(
            session,
            contact,
            name,
            {**message_properties(delivery), "err_code": report.err_code},
            f"{delivery.id}:{name}",
        )


def sms_reply(session: Session, reply: SmsReply) -> None:
    phone = normalize_phone(reply.phone_number)
    if phone is None:
        return
    now = clock.now()
    key = f"sms-up:{reply.sequence_id}"
    detail = {"phone": phone, "content": reply.content[:200]}
    if not record_event_once(session, key, None, "reply", False, detail, now):
        return
    if reply.content.strip().upper() in UNSUBSCRIBE_REPLIES:
        unsubscribe.unsubscribe_phone(session, phone, "sms_reply", key)
