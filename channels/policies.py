"""Send-time policies: consent, suppression, frequency caps and quiet hours in the contact's
time zone, and Aliyun-style per-number SMS limits. Each answers send, suppress or defer.

The facts they need (suppressions, recent sends) are loaded for a whole batch of deliveries
in a few queries, and kept up to date as the batch sends."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from capture.models import Contact
from channels.models import Delivery, Suppression
from channels.settings import ChannelSettings
from core.settings import get_settings

CONSENTED_CHANNELS = ("email", "sms")


class Verdict(StrEnum):
    send = "send"
    suppress = "suppress"
    defer = "defer"
    fail = "fail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    code: str | None = None
    reason: str | None = None
    until: datetime | None = None


SEND = Decision(Verdict.send)


def contact_zone(contact: Contact) -> ZoneInfo:
    for name in (contact.timezone, get_settings().default_timezone):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("Asia/Shanghai")


def address_of(contact: Contact, channel: str) -> str | None:
    if channel == "email":
        return contact.email.strip().lower() if contact.email else None
    if channel == "sms":
        return contact.phone
    return None


def _at_hour(day: date, hour: int, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(hour % 24), tzinfo=zone) + timedelta(days=hour // 24)


def outside_window(now: datetime, zone: ZoneInfo, start: int, end: int) -> datetime | None:
    """When `now` falls outside the daily window [start, end) local time, the next start."""
    local = now.astimezone(zone)
    if start == end:
        return None
    inside = start <= local.hour < end if start < end else local.hour >= start or local.hour < end
    if inside:
        return None
    today_start = _at_hour(local.date(), start, zone)
    return (
        today_start
        if today_start > local
        else _at_hour(local.date() + timedelta(days=1), start, zone)
    )


def quiet_until(channel: str, now: datetime, zone: ZoneInfo, s: ChannelSettings) -> datetime | None:
    if channel == "sms":
        return outside_window(now, zone, s.sms_marketing_start_hour, s.sms_marketing_end_hour)
    # Email quiet hours are the hours to avoid, so the allowed window runs from their end.
    return outside_window(now, zone, s.quiet_hours_end, s.quiet_hours_start)


@dataclass
class PolicyFacts:
    """Suppressed addresses and recent send times for the contacts and numbers of a batch."""

    suppressed: dict[str, str] = field(default_factory=dict)  # address -> reason
    marketing_sends: dict[uuid.UUID, list[datetime]] = field(
        default_factory=lambda: defaultdict(list)
    )
    number_sends: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))

    def note_sent(self, delivery: Delivery, at: datetime) -> None:
        if not delivery.transactional and delivery.contact_id is not None:
            self.marketing_sends[delivery.contact_id].append(at)
        if delivery.channel == "sms" and delivery.to_address:
            self.number_sends[delivery.to_address].append(at)


CAP_HISTORY = timedelta(days=8)
NUMBER_HISTORY = timedelta(days=1)


def load_facts(
    session: Session,
    channel: str,
    contact_ids: Iterable[uuid.UUID],
    addresses: Iterable[str],
    now: datetime,
) -> PolicyFacts:
    facts = PolicyFacts()
    addresses = sorted(set(addresses))
    contact_ids = sorted(set(contact_ids))
    if channel not in CONSENTED_CHANNELS:
        return facts
    if addresses:
        rows = session.execute(
            select(Suppression.address, Suppression.reason).where(
                Suppression.channel == channel, Suppression.address.in_(addresses)
            )
        )
        facts.suppressed = {address: reason for address, reason in rows}
    if contact_ids:
        for contact_id, sent_at in session.execute(
            select(Delivery.contact_id, Delivery.sent_at).where(
                Delivery.contact_id.in_(contact_ids),
                Delivery.channel == channel,
                Delivery.transactional.is_(False),
                Delivery.sent_at >= now - CAP_HISTORY,
            )
        ):
            if contact_id is not None and sent_at is not None:
                facts.marketing_sends[contact_id].append(sent_at)
    if channel == "sms" and addresses:
        for address, sent_at in session.execute(
            select(Delivery.to_address, Delivery.sent_at).where(
                Delivery.channel == "sms",
                Delivery.to_address.in_(addresses),
                Delivery.sent_at > now - NUMBER_HISTORY,
            )
        ):
            if address is not None and sent_at is not None:
                facts.number_sends[address].append(sent_at)
    return facts


def frequency_cap(
    sends: list[datetime], channel: str, now: datetime, zone: ZoneInfo, s: ChannelSettings
) -> Decision:
    daily, weekly = {
        "email": (s.email_daily_cap, s.email_weekly_cap),
        "sms": (s.sms_daily_cap, s.sms_weekly_cap),
    }[channel]
    local_day = now.astimezone(zone).date()
    day_start = datetime.combine(local_day, time(), tzinfo=zone)
    week_start = day_start - timedelta(days=local_day.weekday())
    this_week = sum(1 for at in sends if at >= week_start)
    today = sum(1 for at in sends if at >= day_start)
    if this_week >= weekly:
        reason = f"{this_week} marketing {channel} messages this week (cap {weekly})"
        return Decision(
            Verdict.defer, "frequency_cap_weekly", reason, week_start + timedelta(days=7)
        )
    if today >= daily:
        reason = f"{today} marketing {channel} messages today (cap {daily})"
        return Decision(Verdict.defer, "frequency_cap_daily", reason, day_start + timedelta(days=1))
    return SEND


def per_number_limit(sends: list[datetime], now: datetime, s: ChannelSettings) -> Decision:
    windows = (
        (timedelta(days=1), s.sms_per_number_per_day, "day"),
        (timedelta(hours=1), s.sms_per_number_per_hour, "hour"),
        (timedelta(minutes=1), s.sms_per_number_per_minute, "minute"),
    )
    for window, limit, name in windows:
        recent = sorted(at for at in sends if at > now - window)
        if len(recent) >= limit:
            # Sending is allowed again when enough of these have left the window.
            until = recent[len(recent) - limit] + window
            reason = f"{len(recent)} SMS to this number in the last {name} (limit {limit})"
            return Decision(Verdict.defer, f"per_number_limit_{name}", reason, until)
    return SEND


def evaluate(
    delivery: Delivery,
    contact: Contact | None,
    address: str | None,
    now: datetime,
    s: ChannelSettings,
    facts: PolicyFacts,
) -> Decision:
    """Applies every policy for one delivery at the moment of sending (a message to an explicit
    address has no contact, and only the address policies apply)."""
    channel = delivery.channel
    if channel not in CONSENTED_CHANNELS:
        return SEND
    if not address:
        return Decision(Verdict.fail, "no_address", f"the contact has no {channel} address")
    reason_code = facts.suppressed.get(address)
    if reason_code is not None:
        reason = f"{address} is on the suppression list ({reason_code})"
        return Decision(Verdict.suppress, f"suppressed_{reason_code}", reason)
    if not delivery.transactional and contact is not None:
        unsubscribed = (
            contact.email_unsubscribed if channel == "email" else contact.sms_unsubscribed
        )
        consent = contact.email_consent if channel == "email" else contact.sms_consent
        if contact.suppressed:
            return Decision(Verdict.suppress, "contact_suppressed", "the contact is suppressed")
        if unsubscribed:
            return Decision(Verdict.suppress, "unsubscribed", f"unsubscribed from {channel}")
        if consent != "granted":
            return Decision(
                Verdict.suppress, "no_consent", f"{channel} consent is '{consent}', not 'granted'"
            )
        zone = contact_zone(contact)
        until = quiet_until(channel, now, zone, s)
        if until is not None:
            code = "sms_marketing_hours" if channel == "sms" else "quiet_hours"
            local = until.astimezone(zone).strftime("%H:%M %Z")
            return Decision(Verdict.defer, code, f"outside sending hours; next at {local}", until)
        capped = frequency_cap(facts.marketing_sends[contact.id], channel, now, zone, s)
        if capped.verdict is not Verdict.send:
            return capped
    if channel == "sms":
        return per_number_limit(facts.number_sends[address], now, s)
    return SEND
