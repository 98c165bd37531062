"""Parsing queued envelopes into messages: validated at capture, enriched here (user agent,
IP, clean JSON, identity keys, the event's COPY text and campaign touch) before storing.

Pure Python with no database: it runs on the ingest worker's helper thread beside the storing
lanes, and is compiled by mypyc where a C compiler is present (see core/compiled.py).
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from capture.enrichment import DeviceInfo, Touch, anonymize_ip, is_dotted_quad, parse_user_agent
from capture.envelope import queued_envelopes
from capture.event_store import parsed_event_text
from capture.identity import clean_json_each, normalize_email, normalize_phone
from capture.resolution import IdentityKey
from capture.visits import campaign_touch
from core.settings import get_settings


@dataclass(slots=True)
class Message:
    """One envelope from the queue, validated at capture and enriched here."""

    source_id: uuid.UUID
    message_id: str
    type: str
    name: str | None
    timestamp: datetime
    original_timestamp: datetime | None
    received_at: datetime
    anonymous_id: str | None
    user_id: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    url: str | None
    path: str | None
    referrer: str | None
    device: DeviceInfo
    ip: str | None
    raw_ip: str | None
    keys: list[IdentityKey]
    envelope: dict[str, Any]
    contact_id: uuid.UUID = field(default=uuid.UUID(int=0))
    visit_id: uuid.UUID | None = None
    channel: str | None = None
    touch: Touch | None = None  # set when this message opened a visit
    campaign_touch: Touch | None = None  # see capture.visits.campaign_touch
    parsed_event_text: str = ""  # see capture.event_store.parsed_event_text

    def unresolve(self) -> None:
        """Forgets what a try at storing it decided, for another try."""
        self.contact_id = uuid.UUID(int=0)
        self.visit_id = self.channel = self.touch = None


@dataclass
class ParsedBatch:
    messages: list[Message]
    bot_hits: Counter[tuple[uuid.UUID, date, str]]

    def split(self, parts: int) -> list[ParsedBatch]:
        """The batch in `parts` parts by visitor (anonymous id, else user id): a visitor's
        messages stay together and in order. Bot hits go with the first part."""
        if parts <= 1:
            return [self]
        messages: list[list[Message]] = [[] for _ in range(parts)]
        for message in self.messages:
            messages[hash(message.anonymous_id or message.user_id) % parts].append(message)
        return [
            ParsedBatch(part, self.bot_hits if index == 0 else Counter())
            for index, part in enumerate(messages)
        ]


# Parsing is pure Python and runs beside the storing lanes, whose threads need the GIL for a
# moment each time PostgreSQL answers. Left to the interpreter, each of them would wait out
# the switch interval (5 ms) while the parser runs on (the "convoy effect"); a pause of a
# microsecond every few dozen messages hands the GIL over at once. The parser keeps up easily:
# it is idle about half of the time.
GIVE_WAY_EVERY = 64
GIVE_WAY_SECONDS = 1e-6


def parse_batch(envelopes: list[dict[str, Any]]) -> ParsedBatch:
    anonymize = get_settings().anonymize_ip
    messages: list[Message] = []
    bot_hits: Counter[tuple[uuid.UUID, date, str]] = Counter()
    for count, envelope in enumerate(queued_envelopes(envelopes), 1):
        if count % GIVE_WAY_EVERY == 0:
            time.sleep(GIVE_WAY_SECONDS)
        message = parse_message(envelope, anonymize)
        if message.device.is_bot:
            bot_hits[
                (message.source_id, message.timestamp.date(), message.device.bot_name or "")
            ] += 1
            continue
        message.parsed_event_text = parsed_event_text(message)
        message.campaign_touch = campaign_touch(message)
        messages.append(message)
    return ParsedBatch(messages, bot_hits)


def parse_message(envelope: dict[str, Any], anonymize: bool) -> Message:
    context, properties, traits = clean_json_each(
        [
            envelope.get("context") or {},
            envelope.get("properties") or {},
            envelope.get("traits") or {},
        ]
    )
    assert isinstance(context, dict) and isinstance(properties, dict) and isinstance(traits, dict)
    page = context["page"] if isinstance(context.get("page"), dict) else {}
    kind = envelope["type"]
    # A page call's own properties win over the page context.
    own = properties if kind == "page" else {}
    keys: list[IdentityKey] = []
    if envelope.get("anonymousId"):
        keys.append(("anonymous", envelope["anonymousId"]))
    if envelope.get("userId"):
        keys.append(("user_id", envelope["userId"]))
    if kind == "alias" and envelope.get("previousId"):
        keys.append(("anonymous", envelope["previousId"]))
    if kind == "identify":
        email = normalize_email(traits.get("email"))
        phone = normalize_phone(traits.get("phone"))
        if email:
            keys.append(("email", email))
            traits["email"] = email
        if phone:
            keys.append(("phone", phone))
            traits["phone"] = phone

    raw_ip, ip = client_ip(envelope.get("ip"), anonymize)
    return Message(
        source_id=source_uuid(envelope["sourceId"]),
        message_id=envelope["messageId"],
        type=kind,
        name=envelope.get("event") or envelope.get("name"),
        timestamp=datetime.fromisoformat(envelope["timestamp"]),
        original_timestamp=_optional_time(envelope.get("originalTimestamp")),
        received_at=datetime.fromisoformat(envelope["receivedAt"]),
        anonymous_id=envelope.get("anonymousId"),
        user_id=envelope.get("userId"),
        properties=properties,
        traits=traits,
        context=context,
        url=_page_field(own, page, "url"),
        path=_page_field(own, page, "path"),
        referrer=_page_field(own, page, "referrer"),
        device=parse_user_agent(envelope.get("userAgent")),
        ip=ip,
        raw_ip=raw_ip,
        keys=keys,
        envelope=envelope,
    )


def _page_field(own: dict[str, Any], page: dict[str, Any], name: str) -> str | None:
    # Not a closure: mypyc makes each call's closure a reference cycle, left to the cycle
    # collector, whose passes over the in-flight batches then cost 5-9 us of ~70 per event.
    value = own.get(name)
    value = value if isinstance(value, str) and value else page.get(name)
    return value[:4000] if isinstance(value, str) and value else None


@lru_cache(maxsize=1024)
def source_uuid(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def client_ip(value: str | None, anonymize: bool) -> tuple[str | None, str | None]:
    """The client's address as given when it is one, and as events store it."""
    if not value:
        return None, None
    return _client_ip(value, anonymize)


# A visitor's events come from one address: most lookups hit.
@lru_cache(maxsize=16384)
def _client_ip(value: str, anonymize: bool) -> tuple[str | None, str | None]:
    raw = value if is_dotted_quad(value) else _parsed_ip(value)
    return raw, anonymize_ip(raw) if anonymize else raw


def _parsed_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _optional_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
