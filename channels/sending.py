"""Delivering at send time: lock the delivery (and other queued ones of its channel), load
fresh state, apply the policies, render, call the provider and record what happened (retries
and deferrals wait in the database)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from capture.models import Contact
from channels import emails, policies, robot_queue, templates
from channels.models import Delivery, EmailLayout, Template, TrackedLink, WebhookEndpoint
from channels.outcome import Outcome, Result
from channels.policies import Verdict
from channels.providers import aliyun_sms, smtp, webhook
from channels.records import PAUSE_RECHECK, channel_paused, contact_view, defer, fail, record
from channels.settings import ChannelSettings, get_channel_settings
from core.clock import clock
from core.db import dialect_insert, is_postgres

ROBOT_CHANNELS = ("wecom", "dingtalk")
BATCHED_CHANNELS = ("email", "sms")


@dataclass
class SendRun:
    """What one run of sends shares: settings, the moment, policy facts, link rows to write."""

    settings: ChannelSettings
    now: datetime
    facts: policies.PolicyFacts
    tracked_links: list[dict[str, Any]] = field(default_factory=list)


def is_due(delivery: Delivery, now: datetime) -> bool:
    return delivery.status == "queued" or (
        delivery.status == "deferred"
        and (delivery.next_attempt_at is None or delivery.next_attempt_at <= now)
    )


def deliver(session: Session, delivery_id: uuid.UUID) -> str:
    """Sends one delivery if it is still due, with other queued ones of its channel; returns
    its status afterwards. Safe to run twice: the row lock and the status check make a second
    run a no-op."""
    delivery = session.scalar(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
    if delivery is None:
        return "missing"
    now = clock.now()
    if not is_due(delivery, now):
        return delivery.status
    settings = get_channel_settings()
    # Changes to deliveries are written once, at commit, not before every query.
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
    """Other queued deliveries of the same channel, sent in the same transaction so that many
    messages share one set of policy queries and one commit (rows that other workers are
    sending are skipped)."""
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
    """Sends deliveries of one channel: what they need is loaded in a few set-based queries."""
    channel = deliveries[0].channel
    contacts = {
        contact.id: contact
        for contact in session.scalars(
            select(Contact).where(Contact.id.in_({d.contact_id for d in deliveries}))
        )
    }
    template_ids = {d.template_id for d in deliveries if d.template_id is not None}
    if template_ids:
        # Loaded into the session, so the senders' session.get() calls cost no query.
        loaded = list(session.scalars(select(Template).where(Template.id.in_(template_ids))))
        layout_ids = {t.layout_id for t in loaded if t.layout_id is not None}
        if layout_ids:
            session.scalars(select(EmailLayout).where(EmailLayout.id.in_(layout_ids))).all()
    addresses = {
        d.id: policies.address_of(contacts[d.contact_id], channel)
        for d in deliveries
        if d.contact_id in contacts
    }
    facts = policies.load_facts(
        session,
        channel,
        contacts,
        [address for address in addresses.values() if address],
        now,
    )
    run = SendRun(settings, now, facts)
    for delivery in deliveries:
        send_one(
            session, delivery, contacts.get(delivery.contact_id), addresses.get(delivery.id), run
        )
    if run.tracked_links:
        insert = dialect_insert(session, TrackedLink)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["delivery_id", "position"], set_={"url": insert.excluded.url}
            ),
            run.tracked_links,
        )


def send_one(
    session: Session,
    delivery: Delivery,
    contact: Contact | None,
    address: str | None,
    run: SendRun,
) -> None:
    now = run.now
    if contact is None:
        fail(delivery, "contact_missing", "the contact no longer exists", now)
        return
    decision = policies.evaluate(delivery, contact, address, now, run.settings, run.facts)
    if decision.verdict is Verdict.suppress:
        delivery.status = "suppressed"
        delivery.error_code, delivery.error_reason = decision.code, decision.reason
        delivery.next_attempt_at = None
        return
    if decision.verdict is Verdict.defer:
        defer(delivery, decision.code, decision.reason, decision.until)
        return
    if decision.verdict is Verdict.fail:
        fail(delivery, decision.code, decision.reason, now)
        return
    delivery.to_address = address
    delivery.last_attempt_at = now
    outcome = SENDERS[delivery.channel](session, delivery, contact, run)
    record(session, delivery, contact, outcome, now, run.settings)
    if delivery.sent_at == now:
        run.facts.note_sent(delivery, now)


def _template(session: Session, delivery: Delivery) -> Template | None:
    if delivery.template_id is None:
        return None
    template = session.get(Template, delivery.template_id)
    return None if template is None or template.archived_at is not None else template


def send_email(session: Session, delivery: Delivery, contact: Contact, run: SendRun) -> Outcome:
    settings = run.settings
    template = _template(session, delivery)
    if template is None:
        return Outcome(Result.failed, "template_missing", "the template is missing or archived")
    layout = session.get(EmailLayout, template.layout_id) if template.layout_id else None
    try:
        composed = emails.compose(
            delivery_id=delivery.id,
            template=template,
            layout=layout,
            variables=templates.variables_for(contact_view(contact), delivery.context),
            recipient=delivery.to_address or "",
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
    return smtp.get_connection(settings).send(
        composed.data, composed.message_id, composed.sender, delivery.to_address or ""
    )


def send_sms(session: Session, delivery: Delivery, contact: Contact, run: SendRun) -> Outcome:
    settings = run.settings
    template = _template(session, delivery)
    if template is None or not template.provider_template_code:
        return Outcome(Result.failed, "template_missing", "no SMS template with an Aliyun code")
    if not (settings.aliyun_access_key_id and settings.aliyun_access_key_secret):
        return Outcome(Result.account_problem, "not_configured", "Aliyun access key is not set")
    if not settings.aliyun_sms_sign_name:
        return Outcome(Result.account_problem, "not_configured", "Aliyun SMS sign name is not set")
    client = aliyun_sms.get_client(settings)
    phone, out_id = delivery.to_address or "", str(delivery.id)
    if delivery.error_code == "ambiguous_timeout" and delivery.sent_at is None:
        # The last SendSms may have gone through: resending blindly could send twice.
        found = client.find_sent(phone, delivery.last_attempt_at or clock.now(), out_id)
        if isinstance(found, Outcome):
            return found
        if found is not None:
            if found.status == 2:
                return Outcome(
                    Result.failed, found.err_code or "failed", "Aliyun reports a failure"
                )
            result = Result.delivered if found.status == 3 else Result.sent
            return Outcome(result, message_id=delivery.provider_message_id)
    variables = templates.variables_for(contact_view(contact), delivery.context)
    try:
        params = {
            name: templates.render(str(expr), variables, html_escape=False, field=f"params.{name}")
            for name, expr in (template.params or {}).items()
        }
    except templates.TemplateProblem as exc:
        return Outcome(Result.failed, "template_error", str(exc))
    return client.send(
        phone, settings.aliyun_sms_sign_name, template.provider_template_code, params, out_id
    )


def webhook_body(delivery: Delivery, contact: Contact, template: Template | None) -> bytes:
    variables = templates.variables_for(contact_view(contact), delivery.context)
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
            "contact": contact_view(contact),
            "data": delivery.context,
        }
    )


def send_webhook(session: Session, delivery: Delivery, contact: Contact, run: SendRun) -> Outcome:
    endpoint_id = delivery.target.get("endpoint_id")
    endpoint = session.get(WebhookEndpoint, uuid.UUID(str(endpoint_id))) if endpoint_id else None
    if endpoint is None or not endpoint.active:
        return Outcome(Result.failed, "endpoint_missing", "the webhook endpoint is missing or off")
    try:
        body = webhook_body(delivery, contact, _template(session, delivery))
    except (templates.TemplateProblem, orjson.JSONDecodeError) as exc:
        return Outcome(Result.failed, "template_error", str(exc))
    delivery.to_address = str(endpoint.id)
    return webhook.post(
        webhook.http_client(), endpoint.url, endpoint.secret, body, str(delivery.id)
    )


SENDERS: dict[str, Callable[[Session, Delivery, Contact, SendRun], Outcome]] = {
    "email": send_email,
    "sms": send_sms,
    "webhook": send_webhook,
}
