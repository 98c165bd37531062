"""Delivering at send time: lock the delivery (and other queued ones of its channel), load
fresh state, apply the policies, render, then send and record what happened (retries and
deferrals wait in the database).

A message is never sent twice, even by a worker killed mid-batch: the batch is first committed
as reserved ("sending", not yet out), then each message is claimed in its own commit (which also
records the previous message's result) just before it goes out. A reservation whose worker
died is queued again; a claim whose worker died may or may not have gone out, so it is resolved
without a blind resend (`recover_interrupted`)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from capture.models import Contact
from channels import emails, engagement, policies, robot_queue, templates, tokens
from channels.models import Delivery, EmailLayout, Template, TrackedLink, WebhookEndpoint
from channels.outcome import Outcome, Result
from channels.policies import Verdict
from channels.providers import aliyun_sms, smtp, webhook
from channels.records import (
    PAUSE_RECHECK,
    channel_paused,
    defer,
    fail,
    recipient_view,
    record,
)
from channels.settings import ChannelSettings, get_channel_settings
from core.clock import clock
from core.db import dialect_insert, is_postgres

ROBOT_CHANNELS = ("wecom", "dingtalk")
BATCHED_CHANNELS = ("email", "sms")
# Far longer than any provider call takes (timeouts are seconds): a claim this old lost its worker.
SENDING_LEASE = timedelta(minutes=5)
AMBIGUOUS_EMAIL = (
    "the worker stopped while handing this email to the SMTP server; it may have gone out, "
    "so it is not sent again"
)

Send = Callable[[], Outcome]


@dataclass
class SendRun:
    """What one run of sends shares: settings, the moment, policy facts, link rows to write."""

    settings: ChannelSettings
    now: datetime
    facts: policies.PolicyFacts
    tracked_links: list[dict[str, Any]] = field(default_factory=list)

    def tracked_links_of(self, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
        return [link for link in self.tracked_links if link["delivery_id"] == delivery_id]


@dataclass(frozen=True)
class Ready:
    """A delivery that passed its policies and is rendered: `send` makes the provider call."""

    delivery: Delivery
    contact: Contact | None
    send: Send


def is_due(delivery: Delivery, now: datetime) -> bool:
    return delivery.status == "queued" or (
        delivery.status == "deferred"
        and (delivery.next_attempt_at is None or delivery.next_attempt_at <= now)
    )


def interrupted(delivery: Delivery, now: datetime) -> bool:
    """A reservation or claim left behind by a worker that stopped."""
    return delivery.status == "sending" and delivery.updated_at < now - SENDING_LEASE


def recover_interrupted(delivery: Delivery, now: datetime) -> None:
    """Reserved but never claimed: queue it again. Claimed: it may have gone out. SMS is
    checked with QuerySendDetails before any resend; a webhook goes again (it carries the
    delivery id, so receivers drop a repeat); an email is failed with the reason."""
    if delivery.sending_at is None:
        delivery.status, delivery.next_attempt_at = "queued", None
    elif delivery.channel == "sms":
        defer(delivery, "ambiguous_timeout", "the worker stopped during SendSms", now)
    elif delivery.channel == "webhook":
        defer(delivery, "ambiguous_send", "the worker stopped during the webhook call", now)
    else:
        fail(delivery, "ambiguous_send", AMBIGUOUS_EMAIL, now)


def deliver(session: Session, delivery_id: uuid.UUID) -> str:
    """Sends one delivery if it is still due, with other queued ones of its channel; returns
    its status afterwards. Safe to run twice or concurrently: the row lock, the status check
    and the per-message claims make a second run a no-op.

    Commits along the way (the claims must be durable before a message goes out)."""
    delivery = session.scalar(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
    if delivery is None:
        return "missing"
    now = clock.now()
    if interrupted(delivery, now):
        recover_interrupted(delivery, now)
    if not is_due(delivery, now):
        return delivery.status
    settings = get_channel_settings()
    # Changes to deliveries are written at the commits, not before every query.
    with session.no_autoflush:
        if channel_paused(session, delivery.channel):
            reason = f"the {delivery.channel} channel is paused"
            defer(delivery, "channel_paused", reason, now + PAUSE_RECHECK)
        elif delivery.channel in ROBOT_CHANNELS:
            robot_queue.flush(session, delivery, now, settings)
        else:
            send_all(session, [delivery, *companions(session, delivery, settings)], now, settings)
    return delivery.status


def companions(session: Session, delivery: Delivery, settings: ChannelSettings) -> list[Delivery]:
    """Other queued deliveries of the same channel, sent by the same run so that many messages
    share one set of policy queries (rows that other workers are sending are skipped)."""
    if delivery.channel not in BATCHED_CHANNELS or settings.send_batch_size <= 1:
        return []
    stmt = (
        select(Delivery)
        .where(
            Delivery.channel == delivery.channel,
            Delivery.status == "queued",
            Delivery.id != delivery.id,
        )
        .order_by(Delivery.created_at)
        .limit(settings.send_batch_size - 1)
    )
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def send_all(
    session: Session, deliveries: list[Delivery], now: datetime, settings: ChannelSettings
) -> None:
    """Sends deliveries of one channel: what they need is loaded in a few set-based queries,
    the ones that may go are reserved in one commit, then each is claimed and sent."""
    channel = deliveries[0].channel
    contacts = {
        contact.id: contact
        for contact in session.scalars(
            select(Contact).where(
                Contact.id.in_({d.contact_id for d in deliveries if d.contact_id is not None})
            )
        )
    }
    template_ids = {d.template_id for d in deliveries if d.template_id is not None}
    if template_ids:
        # Loaded into the session, so the senders' session.get() calls cost no query.
        loaded = list(session.scalars(select(Template).where(Template.id.in_(template_ids))))
        layout_ids = {t.layout_id for t in loaded if t.layout_id is not None}
        if layout_ids:
            session.scalars(select(EmailLayout).where(EmailLayout.id.in_(layout_ids))).all()
    addresses = {d.id: recipient_address(d, contacts) for d in deliveries}
    facts = policies.load_facts(
        session,
        channel,
        contacts,
        [address for address in addresses.values() if address],
        now,
    )
    run = SendRun(settings, now, facts)
    ready: list[Ready] = []
    for delivery in deliveries:
        contact = contacts.get(delivery.contact_id) if delivery.contact_id else None
        prepared = prepare(session, delivery, contact, addresses.get(delivery.id), run)
        if prepared is not None:
            ready.append(prepared)
    if run.tracked_links:
        insert = dialect_insert(session, TrackedLink)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["delivery_id", "position"], set_={"url": insert.excluded.url}
            ),
            run.tracked_links,
        )
    for item in ready:
        item.delivery.status, item.delivery.sending_at = "sending", None
        if item.contact is not None:
            # Their events (sent, bounced) need this binding: written once, with the reservation.
            engagement.contact_anonymous_id(session, item.contact)
    session.commit()
    for item in ready:
        if not claim(session, item.delivery):
            continue
        outcome = item.send()
        record(session, item.delivery, item.contact, outcome, clock.now(), settings)
    session.flush()


def claim(session: Session, delivery: Delivery) -> bool:
    """Marks a reserved delivery as going out now, and commits that (with whatever was recorded
    since the last commit) before the provider is called. False when the reservation was
    taken back meanwhile (its run was thought dead)."""
    now = clock.now()
    claimed = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery.id,
            Delivery.status == "sending",
            Delivery.sending_at.is_(None),
        )
        .values(sending_at=now, last_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(claimed, "rowcount", 0):
        session.commit()
        return False
    for name in ("sending_at", "last_attempt_at", "updated_at"):
        set_committed_value(delivery, name, now)
    session.commit()
    return True


def recipient_address(delivery: Delivery, contacts: dict[uuid.UUID, Contact]) -> str | None:
    """The contact's current address, or the explicit one of an address send."""
    if delivery.contact_id is None:
        return str(delivery.target.get("to") or "") or None
    contact = contacts.get(delivery.contact_id)
    return policies.address_of(contact, delivery.channel) if contact is not None else None


def prepare(
    session: Session,
    delivery: Delivery,
    contact: Contact | None,
    address: str | None,
    run: SendRun,
) -> Ready | None:
    """Applies the policies and renders; a delivery stopped here is recorded with the reason
    and None is returned."""
    now = run.now
    if contact is None and delivery.contact_id is not None:
        fail(delivery, "contact_missing", "the contact no longer exists", now)
        return None
    decision = policies.evaluate(delivery, contact, address, now, run.settings, run.facts)
    if decision.verdict is Verdict.suppress:
        delivery.status = "suppressed"
        delivery.error_code, delivery.error_reason = decision.code, decision.reason
        delivery.next_attempt_at = None
        return None
    if decision.verdict is Verdict.defer:
        defer(delivery, decision.code, decision.reason, decision.until)
        return None
    if decision.verdict is Verdict.fail:
        fail(delivery, decision.code, decision.reason, now)
        return None
    delivery.to_address = address
    delivery.last_attempt_at = now
    prepared = PREPARERS[delivery.channel](session, delivery, contact, run)
    if isinstance(prepared, Outcome):
        record(session, delivery, contact, prepared, now, run.settings)
        return None
    # Counted as sent for the rest of the batch's policies; a failed send only makes them stricter.
    run.facts.note_sent(delivery, now)
    return Ready(delivery, contact, prepared)


def _template(session: Session, delivery: Delivery) -> Template | None:
    if delivery.template_id is None:
        return None
    template = session.get(Template, delivery.template_id)
    return None if template is None or template.archived_at is not None else template


def prepare_email(
    session: Session, delivery: Delivery, contact: Contact | None, run: SendRun
) -> Outcome | Send:
    settings = run.settings
    template = _template(session, delivery)
    if template is None:
        return Outcome(Result.failed, "template_missing", "the template is missing or archived")
    layout = session.get(EmailLayout, template.layout_id) if template.layout_id else None
    recipient = delivery.to_address or ""
    try:
        composed = emails.compose(
            delivery_id=delivery.id,
            template=template,
            layout=layout,
            variables=templates.variables_for(recipient_view(contact, delivery), delivery.context),
            recipient=recipient,
            campaign=delivery.campaign,
            marketing=not delivery.transactional,
            settings=settings,
        )
    except templates.TemplateProblem as exc:
        return Outcome(Result.failed, "template_error", str(exc))
    delivery.subject = composed.subject
    run.tracked_links.extend(
        {"delivery_id": delivery.id, "position": position, "url": url}
        for position, url in enumerate(composed.links)
    )
    connection = smtp.get_connection(settings)
    return lambda: connection.send(composed.data, composed.message_id, composed.sender, recipient)


def prepare_sms(
    session: Session, delivery: Delivery, contact: Contact | None, run: SendRun
) -> Outcome | Send:
    settings = run.settings
    template = _template(session, delivery)
    if template is None or not template.provider_template_code:
        return Outcome(Result.failed, "template_missing", "no SMS template with an Aliyun code")
    if not (settings.aliyun_access_key_id and settings.aliyun_access_key_secret):
        return Outcome(Result.account_problem, "not_configured", "Aliyun access key is not set")
    if not settings.aliyun_sms_sign_name:
        return Outcome(Result.account_problem, "not_configured", "Aliyun SMS sign name is not set")
    variables = templates.variables_for(recipient_view(contact, delivery), delivery.context)
    try:
        params = {
            name: templates.render(str(expr), variables, html_escape=False, field=f"params.{name}")
            for name, expr in (template.params or {}).items()
        }
    except templates.TemplateProblem as exc:
        return Outcome(Result.failed, "template_error", str(exc))
    params = track_sms_links(delivery, template, params, run)
    client = aliyun_sms.get_client(settings)
    sign_name, template_code = settings.aliyun_sms_sign_name, template.provider_template_code
    phone, out_id = delivery.to_address or "", str(delivery.id)
    # The last SendSms may have gone through (a timeout, a worker that stopped): look first.
    check_first = delivery.error_code == "ambiguous_timeout" and delivery.sent_at is None
    last_attempt = delivery.last_attempt_at or clock.now()
    known_message_id = delivery.provider_message_id

    def send() -> Outcome:
        if check_first:
            found = client.find_sent(phone, last_attempt, out_id)
            if isinstance(found, Outcome):
                return found
            if found is not None:
                if found.status == 2:
                    return Outcome(
                        Result.failed, found.err_code or "failed", "Aliyun reports a failure"
                    )
                result = Result.delivered if found.status == 3 else Result.sent
                return Outcome(result, message_id=known_message_id)
        return client.send(phone, sign_name, template_code, params, out_id)

    return send


SMS_LINK = re.compile(r"https?://[^\s<>\"'，。；！？）]+", re.IGNORECASE)


def track_sms_links(
    delivery: Delivery, template: Template, params: dict[str, str], run: SendRun
) -> dict[str, str]:
    """Replaces each link in the SMS parameters with a short signed click URL; the stored link
    carries utm_medium=sms, and a click becomes an `sms_clicked` event."""
    utm = emails.utm_tags(template, delivery.campaign, delivery.context, medium="sms")
    tracked: dict[str, str] = {}

    def shorten(match: re.Match[str]) -> str:
        position = len(run.tracked_links_of(delivery.id))
        url = templates.add_utm(match.group(0), utm)
        run.tracked_links.append({"delivery_id": delivery.id, "position": position, "url": url})
        return emails.public_url(f"/s/{tokens.short_click_token(delivery.id, position)}")

    for name, value in params.items():
        tracked[name] = SMS_LINK.sub(shorten, value)
    return tracked


def webhook_body(delivery: Delivery, contact: Contact | None, template: Template | None) -> bytes:
    variables = templates.variables_for(recipient_view(contact, delivery), delivery.context)
    if template is not None and template.body:
        rendered = templates.render(template.body, variables, html_escape=False, field="body")
        return orjson.dumps(orjson.loads(rendered))
    return orjson.dumps(
        {
            "type": str(delivery.context.get("type") or "journey.webhook"),
            "delivery_id": str(delivery.id),
            "journey_id": str(delivery.journey_id) if delivery.journey_id else None,
            "enrollment_id": str(delivery.enrollment_id) if delivery.enrollment_id else None,
            "campaign": delivery.campaign,
            "contact": recipient_view(contact, delivery),
            "data": delivery.context,
        }
    )


def prepare_webhook(
    session: Session, delivery: Delivery, contact: Contact | None, run: SendRun
) -> Outcome | Send:
    endpoint_id = delivery.target.get("endpoint_id")
    endpoint = session.get(WebhookEndpoint, uuid.UUID(str(endpoint_id))) if endpoint_id else None
    if endpoint is None or not endpoint.active:
        return Outcome(Result.failed, "endpoint_missing", "the webhook endpoint is missing or off")
    try:
        body = webhook_body(delivery, contact, _template(session, delivery))
    except (templates.TemplateProblem, orjson.JSONDecodeError) as exc:
        return Outcome(Result.failed, "template_error", str(exc))
    delivery.to_address = str(endpoint.id)
    url, secret, delivery_id = endpoint.url, endpoint.secret, str(delivery.id)
    return lambda: webhook.post(webhook.http_client(), url, secret, body, delivery_id)


PREPARERS: dict[str, Callable[[Session, Delivery, Contact | None, SendRun], Outcome | Send]] = {
    "email": prepare_email,
    "sms": prepare_sms,
    "webhook": prepare_webhook,
}
