"""Unsubscribing and the preference page: each change updates the contact's consent, keeps a
consent record as proof, and becomes an event on the contact."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from capture.models import ConsentRecord, Contact
from channels import engagement, tokens
from channels.models import Delivery
from channels.records import delivery_contact
from core.clock import clock

PREFERENCE_CHANNELS = ("email", "sms")


@dataclass(frozen=True)
class Preferences:
    email: bool
    sms: bool


def subscribed(contact: Contact, channel: str) -> bool:
    if channel == "email":
        return not contact.email_unsubscribed and contact.email_consent != "denied"
    return not contact.sms_unsubscribed and contact.sms_consent != "denied"


def set_subscription(
    session: Session,
    contact: Contact,
    channel: str,
    subscribe: bool,
    how: str,
    event_key: str,
    delivery: Delivery | None = None,
) -> bool:
    """Records the change when it is one; returns whether anything changed."""
    if subscribed(contact, channel) == subscribe:
        return False
    consent = "granted" if subscribe else "denied"
    if channel == "email":
        contact.email_unsubscribed, contact.email_consent = not subscribe, consent
    else:
        contact.sms_unsubscribed, contact.sms_consent = not subscribe, consent
    text = (
        f"Subscribed to {channel} on the preference page"
        if subscribe
        else f"Unsubscribed from {channel} ({how})"
    )
    session.add(
        ConsentRecord(
            contact_id=contact.id,
            channel=channel,
            granted=subscribe,
            text=text,
            recorded_at=clock.now(),
        )
    )
    properties: dict[str, str | None] = {"channel": channel, "method": how}
    if delivery is not None:
        properties |= {"delivery_id": str(delivery.id), "campaign": delivery.campaign}
    name = f"{channel}_subscribed" if subscribe else f"{channel}_unsubscribed"
    engagement.track(session, contact, name, properties, event_key)
    session.flush()
    return True


def unsubscribe_from_delivery(session: Session, delivery: Delivery, how: str) -> Contact | None:
    contact = delivery_contact(session, delivery, for_update=True)
    if contact is None:
        return None
    channel = delivery.channel if delivery.channel in PREFERENCE_CHANNELS else "email"
    set_subscription(
        session, contact, channel, False, how, f"{delivery.id}:unsubscribe:{channel}", delivery
    )
    return contact


MAILTO_TOKEN = re.compile(r"unsubscribe-([0-9a-f]{32}\.[A-Za-z0-9_\-]+)")


def unsubscribe_by_mail(session: Session, subject: str, text: str) -> Contact | None:
    """A mail to the List-Unsubscribe mailto address: the signed token in its subject (or, when a
    client dropped the subject, its body) names the delivery, whose contact is unsubscribed.
    None when no valid token is found; nothing changes then."""
    for found in MAILTO_TOKEN.finditer(f"{subject}\n{text}"):
        delivery_id = tokens.read_delivery_token("unsubscribe", found.group(1))
        delivery = session.get(Delivery, delivery_id) if delivery_id is not None else None
        if delivery is not None:
            return unsubscribe_from_delivery(session, delivery, "mailto")
    return None


def update_preferences(session: Session, delivery: Delivery, wanted: Preferences) -> Contact | None:
    contact = delivery_contact(session, delivery, for_update=True)
    if contact is None:
        return None
    stamp = clock.now().isoformat()
    for channel in PREFERENCE_CHANNELS:
        set_subscription(
            session,
            contact,
            channel,
            getattr(wanted, channel),
            "preference_page",
            f"{delivery.id}:preferences:{channel}:{stamp}",
            delivery,
        )
    return contact


def unsubscribe_phone(session: Session, phone: str, how: str, event_key: str) -> int:
    """An SMS reply such as R, TD or 退订: every contact with that number stops getting SMS."""
    contacts = session.scalars(select(Contact).where(Contact.phone == phone).with_for_update())
    changed = 0
    for contact in contacts:
        changed += set_subscription(
            session, contact, "sms", False, how, f"{event_key}:{contact.id}"
        )
    return changed


# The pages people see: plain HTML, no script, no external resources.

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;
line-height:1.5}}button{{font-size:1rem;padding:.5rem 1.25rem}}label{{display:block;
margin:.5rem 0}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def page(title: str, body: str) -> str:
    return PAGE.format(title=html.escape(title), body=body)


def confirm_page(action_url: str, channel: str, preferences_url: str) -> str:
    return page(
        "Unsubscribe",
        f"<p>Stop receiving marketing {html.escape(channel)} messages from us?</p>"
        f'<form method="post" action="{html.escape(action_url)}">'
        '<button type="submit" name="confirm" value="yes">Unsubscribe</button></form>'
        f'<p><a href="{html.escape(preferences_url)}">Choose what you receive instead</a></p>',
    )


def done_page(channel: str, preferences_url: str) -> str:
    return page(
        "You are unsubscribed",
        f"<p>You will no longer receive marketing {html.escape(channel)} messages from us.</p>"
        f'<p><a href="{html.escape(preferences_url)}">Manage your preferences</a></p>',
    )


def preferences_page(action_url: str, current: Preferences, saved: bool) -> str:
    def box(channel: str, label: str) -> str:
        checked = " checked" if getattr(current, channel) else ""
        return (
            f'<label><input type="checkbox" name="{channel}" value="yes"{checked}> '
            f"{html.escape(label)}</label>"
        )

    note = "<p><strong>Your preferences are saved.</strong></p>" if saved else ""
    return page(
        "Your preferences",
        note
        + f'<form method="post" action="{html.escape(action_url)}">'
        + box("email", "Marketing email")
        + box("sms", "Marketing SMS")
        + '<button type="submit">Save</button></form>',
    )


def invalid_link_page() -> str:
    return page("Link not valid", "<p>This link is not valid or has expired.</p>")
