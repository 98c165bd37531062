"""The per-robot queue for WeCom and DingTalk: at most N posts a minute per robot, so pending
notifications wait and are coalesced into one message instead of failing."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from channels import claims, templates
from channels.models import Delivery, Robot, RobotPost, Template
from channels.outcome import Outcome, Result
from channels.providers import robots
from channels.providers.webhook import http_client
from channels.records import contact_view, defer, delivery_contact, fail, record
from channels.settings import ChannelSettings
from core.db import is_postgres

WINDOW = timedelta(minutes=1)
MAX_COALESCED = 50
SEPARATOR = "\n\n---\n\n"


def render_note(session: Session, delivery: Delivery) -> tuple[str, str]:
    """(title, markdown) of one notification: its template's body, or the context's text."""
    context = delivery.context or {}
    title = str(context.get("title") or "Nurture")
    template = session.get(Template, delivery.template_id) if delivery.template_id else None
    if template is not None and template.body:
        contact = delivery_contact(session, delivery)
        view = contact_view(contact) if contact is not None else {}
        variables = templates.variables_for(view, context)
        markdown = templates.render(template.body, variables, html_escape=False, field="body")
        if template.subject:
            title = templates.render(
                template.subject, variables, html_escape=False, field="subject"
            )
        return title, markdown
    return title, str(context.get("markdown") or context.get("text") or title)


def pending(session: Session, delivery: Delivery, now: datetime) -> list[Delivery]:
    stmt = (
        select(Delivery)
        .where(
            Delivery.channel == delivery.channel,
            Delivery.to_address == delivery.to_address,
            Delivery.id != delivery.id,
            or_(
                Delivery.status == "queued",
                (Delivery.status == "deferred") & (Delivery.next_attempt_at <= now),
            ),
        )
        .order_by(Delivery.created_at)
        .limit(MAX_COALESCED - 1)
    )
    stmt = stmt.with_for_update(skip_locked=True) if is_postgres(session) else stmt
    return [delivery, *session.scalars(stmt)]


def flush(session: Session, delivery: Delivery, now: datetime, settings: ChannelSettings) -> None:
    """Posts this delivery together with every other one waiting for the same robot."""
    robot_id = uuid.UUID(str(delivery.target.get("robot_id")))
    robot = session.get(Robot, robot_id, with_for_update=True)
    if robot is None or robot.kind != delivery.channel:
        fail(delivery, "robot_missing", f"no {delivery.channel} robot {robot_id}", now)
        return
    batch = pending(session, delivery, now)
    recent = session.execute(
        select(func.count(), func.min(RobotPost.posted_at)).where(
            RobotPost.robot_id == robot.id, RobotPost.posted_at > now - WINDOW
        )
    ).one()
    if recent[0] >= settings.robot_messages_per_minute:
        until = recent[1] + WINDOW
        for waiting in batch:
            defer(waiting, "robot_rate_limit", "the robot's per-minute limit is reached", until)
        return

    limit = robots.max_bytes(robot.kind)
    included: list[Delivery] = []
    notes: list[str] = []
    titles: list[str] = []
    for waiting in batch:
        try:
            title, markdown = render_note(session, waiting)
        except templates.TemplateProblem as exc:
            fail(waiting, "template_error", str(exc), now)
            continue
        combined = SEPARATOR.join([*notes, markdown]).encode()
        if included and len(combined) > limit:
            # What does not fit waits for the next post, due at once.
            defer(waiting, None, None, now)
            continue
        included.append(waiting)
        notes.append(markdown)
        titles.append(title)
    if not included:
        return
    title = titles[0] if len(titles) == 1 else f"{len(titles)} notifications"
    text = SEPARATOR.join(notes).encode()[:limit].decode(errors="ignore")
    # Claimed and committed before the post, as emails are: a worker stopped during it leaves
    # them "may have gone out", not queued to be posted again. The post counts in the robot's
    # window from the claim, so the robot's lock can go with this commit.
    post = RobotPost(robot_id=robot.id, posted_at=now, deliveries=len(included))
    session.add(post)
    for waiting in included:
        waiting.status, waiting.sending_at, waiting.last_attempt_at = "sending", now, now
    claims.reserve(session, [waiting.id for waiting in included], claimed_at=now)
    session.commit()
    outcome = robots.post(http_client(), robot.kind, robot.webhook_url, robot.secret, title, text)
    ledger = claims.Ledger(session)
    for waiting in included:
        ledger.note(waiting.id, outcome)
    ledger.close()
    if outcome.result is not Result.sent:
        session.delete(post)
    if outcome.result is Result.defer:
        outcome = Outcome(Result.defer, outcome.code, outcome.reason, until=now + WINDOW)
    claims.release(session, [waiting.id for waiting in included])
    for waiting in included:
        contact = delivery_contact(session, waiting)
        if contact is not None:
            record(session, waiting, contact, outcome, now, settings)
        else:
            fail(waiting, "contact_missing", "the contact no longer exists", now)
