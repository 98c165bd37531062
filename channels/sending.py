"""Delivering at send time: lock the delivery (and other queued ones of its channel), load
fresh state, apply the policies, render, then send and record what happened (retries and
deferrals wait in the database).

A message is never sent twice, even by a worker killed mid-batch: the batch is committed as
reserved ("sending", not yet out), then each message is claimed in the claim-before-send ledger
(`claims`, one cheap commit) just before it goes out and the provider's answer noted just after;
the batch's outcomes are recorded on the deliveries together at the end. A stopped run's
messages are resolved from the ledger (`recover_interrupted`): never claimed ones are queued
again, answered ones recorded, and a claimed one without an answer, which may have gone out,
is resolved without a blind resend."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from capture.models import Contact
from channels import claims, emails, engagement, policies, robot_queue, templates, tokens
from channels.models import Delivery, EmailLayout, Template, TrackedLink, WebhookEndpoint
from channels.outcome import Outcome, Result
from channels.policies import Verdict
from channels.providers import aliyun_sms, smtp, webhook
from channels.records import (
    PAUSE_RECHECK,
    channel_paused,
    defer,
    delivery_contact,
    fail,
    recipient_view,
    record,
)
from channels.settings import ChannelSettings, get_channel_settings
from core.arrays import RowsInsert, RowsUpdate
from core.clock import clock
from core.db import is_postgres
from core.models import table_of

ROBOT_CHANNELS = ("wecom", "dingtalk")
BATCHED_CHANNELS = ("email", "sms")
# Far longer than any provider call takes (timeouts are seconds): a claim this old lost its worker.
SENDING_LEASE = timedelta(minutes=5)
AMBIGUOUS_EMAIL = (
    "the worker stopped while handing this email to the SMTP server; it may have gone out, "
    "so it is not sent again"
)
AMBIGUOUS_ROBOT_POST = (
    "the worker stopped while posting to the robot; it may have gone out, so it is not posted again"
)

Send = Callable[[], Outcome]
# Built once: every task starts with them, and building a statement costs more than running it.
STATES = select(Delivery.id, Delivery.status, Delivery.next_attempt_at, Delivery.updated_at).where(
    Delivery.id.in_(bindparam("delivery_ids", expanding=True))
)
LOCK_DELIVERIES = (
    select(Delivery)
    .where(Delivery.id.in_(bindparam("delivery_ids", expanding=True)))
    .order_by(Delivery.created_at)
    .with_for_update()
)
LOCK_FREE_DELIVERIES = LOCK_DELIVERIES.with_for_update(skip_locked=True)


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


class DeliveryState(Protocol):
    status: str
    next_attempt_at: datetime | None
    updated_at: datetime


def is_due(delivery: DeliveryState, now: datetime) -> bool:
    return delivery.status == "queued" or (
        delivery.status == "deferred"
        and (delivery.next_attempt_at is None or delivery.next_attempt_at <= now)
    )


def interrupted(delivery: DeliveryState, now: datetime) -> bool:
    """A reservation or claim left behind by a worker that stopped."""
    return delivery.status == "sending" and delivery.updated_at < now - SENDING_LEASE


def recover_interrupted(
    session: Session, deliveries: list[Delivery], now: datetime, settings: ChannelSettings
) -> None:
    """Resolves deliveries a stopped run left "sending", from its ledger rows."""
    left = claims.left_behind(session, [delivery.id for delivery in deliveries])
    for delivery in deliveries:
        row = left.get(delivery.id)
        outcome = claims.noted_outcome(row) if row is not None else None
        if row is not None and row.claimed_at is None:
            delivery.status, delivery.next_attempt_at = "queued", None
        elif row is not None and outcome is not None:
            delivery.sending_at = row.claimed_at
            contact = delivery_contact(session, delivery)
            record(session, delivery, contact, outcome, row.claimed_at, settings)
        else:
            # Claimed without an answer, or no ledger row (a database crash took it).
            delivery.sending_at = row.claimed_at if row is not None else delivery.sending_at
            resolve_ambiguous(delivery, now)
    claims.release(session, list(left))


def resolve_ambiguous(delivery: Delivery, now: datetime) -> None:
    """A message that may have gone out: SMS is checked with QuerySendDetails before any
    resend; a webhook goes again (it carries the delivery id, so receivers drop a repeat); an
    email or robot post is failed with the reason."""
    if delivery.channel == "sms":
        defer(delivery, "ambiguous_timeout", "the worker stopped during SendSms", now)
    elif delivery.channel == "webhook":
        defer(delivery, "ambiguous_send", "the worker stopped during the webhook call", now)
    elif delivery.channel in ROBOT_CHANNELS:
        fail(delivery, "ambiguous_send", AMBIGUOUS_ROBOT_POST, now)
    else:
        fail(delivery, "ambiguous_send", AMBIGUOUS_EMAIL, now)


def deliver(session: Session, delivery_id: uuid.UUID) -> str:
    """Sends one delivery if it is still due (with other queued ones of its channel); returns
    its status afterwards."""
    return deliver_many(session, [delivery_id])[delivery_id]


def deliver_many(session: Session, delivery_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Sends the deliveries that are still due, each channel's together and topped up with
    other queued ones; returns each one's status afterwards. Safe to run twice or concurrently:
    the row locks, the status check and the per-message claims make a second run a no-op.

    Commits along the way (the reservation must be durable before a message goes out)."""
    now = clock.now()
    # A task often finds its messages already sent by another run: a plain read tells,
    # without loading or locking the rows (or, on PostgreSQL, checking out a connection).
    states = {
        row.id: row
        for row in claims.read_rows(session, STATES, {"delivery_ids": list(delivery_ids)})
    }
    statuses = {d: str(states[d].status) if d in states else "missing" for d in delivery_ids}
    due = [d for d in delivery_ids if d in states and needs_sending(states[d], now)]
    if not due:
        return statuses
    lock = LOCK_FREE_DELIVERIES if is_postgres(session) else LOCK_DELIVERIES
    # On PostgreSQL a row another run holds is skipped (a batch about to reserve it, or a
    # requeue that enqueues a task after its commit): waiting for that run would idle this one.
    locked = list(session.scalars(lock, {"delivery_ids": due}))
    statuses.update({d: "sending" if is_postgres(session) else "missing" for d in due})
    settings = get_channel_settings()
    stale = [delivery for delivery in locked if interrupted(delivery, now)]
    if stale:
        recover_interrupted(session, stale, now, settings)
    by_channel: dict[str, list[Delivery]] = {}
    for delivery in locked:
        statuses[delivery.id] = delivery.status
        if is_due(delivery, now):
            by_channel.setdefault(delivery.channel, []).append(delivery)
    # Changes to deliveries are written at the commits, not before every query.
    with session.no_autoflush:
        for channel, deliveries in by_channel.items():
            send_channel(session, channel, deliveries, now, settings)
    statuses.update({delivery.id: delivery.status for delivery in locked})
    return statuses


def needs_sending(state: DeliveryState, now: datetime) -> bool:
    return is_due(state, now) or interrupted(state, now)


def send_channel(
    session: Session,
    channel: str,
    deliveries: list[Delivery],
    now: datetime,
    settings: ChannelSettings,
) -> None:
    if channel_paused(session, channel):
        reason = f"the {channel} channel is paused"
        for delivery in deliveries:
            defer(delivery, "channel_paused", reason, now + PAUSE_RECHECK)
    elif channel in ROBOT_CHANNELS:
        # A post carries every note waiting for its robot: later ones may be in it already.
        for delivery in deliveries:
            if is_due(delivery, now):
                robot_queue.flush(session, delivery, now, settings)
    else:
        send_all(session, [*deliveries, *companions(session, deliveries, settings)], now, settings)


def companions(
    session: Session, deliveries: list[Delivery], settings: ChannelSettings
) -> list[Delivery]:
    """Other queued deliveries of the same channel, sent by the same run so that many messages
    share one set of policy queries (rows that other workers are sending are skipped)."""
    channel = deliveries[0].channel
    room = settings.send_batch_size - len(deliveries)
    if channel not in BATCHED_CHANNELS or room <= 0:
        return []
    stmt = (
        select(Delivery)
        .where(
            Delivery.channel == channel,
            Delivery.status == "queued",
            Delivery.id.not_in([delivery.id for delivery in deliveries]),
        )
        .order_by(Delivery.created_at)
        .limit(room)
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
    WRITE_TRACKED_LINKS(session, run.tracked_links)
    for item in ready:
        item.delivery.status, item.delivery.sending_at = "sending", None
        if item.contact is not None:
            # Their events (sent, bounced) need this binding: written once, with the reservation.
            engagement.contact_anonymous_id(session, item.contact)
    WRITE_RESERVED(session, [item.delivery for item in ready])
    claims.reserve(session, [item.delivery.id for item in ready])
    session.commit()
    answered: list[Answered] = []
    reached = 0
    ledger = claims.Ledger(session)
    try:
        for item in ready:
            reached += 1
            claimed_at = clock.now()
            if not ledger.claim(item.delivery.id, claimed_at):
                continue
            outcome = item.send()
            ledger.note(item.delivery.id, outcome)
            answered.append(Answered(item, claimed_at, clock.now(), outcome))
    finally:
        ledger.close()
        # A message whose send raised stays claimed ("may have gone out"); the ones after it
        # were never claimed and go back to the queue.
        record_run(session, answered, [item.delivery for item in ready[reached:]], settings)


@dataclass(frozen=True)
class Answered:
    item: Ready
    claimed_at: datetime
    answered_at: datetime
    outcome: Outcome


DELIVERIES = table_of(Delivery)
WRITE_TRACKED_LINKS = RowsInsert(
    table_of(TrackedLink),
    ["delivery_id", "position", "url"],
    conflict=["delivery_id", "position"],
    replace=["url"],
)


class DeliveryWrite:
    """One statement writing some columns of a run's deliveries from their objects, which then
    count as written (the flush skips them): a fraction of the unit of work's cost."""

    def __init__(self, *columns: str) -> None:
        self.columns = columns
        self.write = RowsUpdate(DELIVERIES, "id", columns)

    def __call__(self, session: Session, deliveries: list[Delivery]) -> None:
        self.write(
            session,
            [{"id": d.id, **{name: getattr(d, name) for name in self.columns}} for d in deliveries],
        )
        for delivery in deliveries:
            for name in self.columns:
                set_committed_value(delivery, name, getattr(delivery, name))


# What `prepare` and the reservation set on a delivery that goes out.
WRITE_RESERVED = DeliveryWrite("status", "sending_at", "to_address", "last_attempt_at", "subject")
# What `record` sets for a message the provider took.
WRITE_SENT = DeliveryWrite(
    "status",
    "attempts",
    "sending_at",
    "sent_at",
    "delivered_at",
    "next_attempt_at",
    "error_code",
    "error_reason",
    "provider",
    "provider_message_id",
)


def record_run(
    session: Session, answered: list[Answered], unsent: list[Delivery], settings: ChannelSettings
) -> None:
    """Records a run's outcomes on their deliveries and drops its ledger rows, in one commit."""
    for done in answered:
        delivery = done.item.delivery
        delivery.sending_at = done.claimed_at
        record(session, delivery, done.item.contact, done.outcome, done.answered_at, settings)
    WRITE_SENT(
        session,
        [
            done.item.delivery
            for done in answered
            if done.outcome.result in (Result.sent, Result.delivered)
        ],
    )
    for delivery in unsent:
        delivery.status = "queued"
    claims.release(session, [d.item.delivery.id for d in answered] + [d.id for d in unsent])
    session.commit()


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
