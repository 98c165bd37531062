"""Our own inbound SMTP server for the List-Unsubscribe mailto address (`nurture mail-in`), for
deployments whose mail provider cannot post inbound mail to /hooks/email/inbound: point the
MX of the unsubscribe mailbox's domain at it. aiosmtpd speaks SMTP; this module only decides
which mail it takes and what a mail to the mailbox does."""

from __future__ import annotations

import asyncio
import logging
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from channels import unsubscribe
from channels.emails import unsubscribe_mailbox
from channels.settings import get_channel_settings
from core.db import session_scope

log = logging.getLogger(__name__)

# An unsubscribe request is a few lines; anything far bigger is not one.
MAX_MAIL_BYTES = 256 * 1024
MAX_TEXT_CHARS = 20_000


class UnsubscribeMailbox:
    """Takes mail for the one unsubscribe mailbox and refuses every other recipient (so the
    server is never an open relay); a mail whose subject or body holds a valid token
    unsubscribes its contact, any other mail is accepted and dropped."""

    def __init__(self, mailbox: str) -> None:
        self.mailbox = mailbox.lower()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() != self.mailbox:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode()
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        subject = str(message.get("subject", ""))
        try:
            await asyncio.to_thread(self.unsubscribe, subject, plain_text(message))
        except Exception:
            log.exception("could not handle a mail to the unsubscribe mailbox")
            # Temporary: the sender's server keeps the mail and tries again later.
            return "451 4.3.0 could not process the mail now, try again later"
        return "250 2.0.0 OK"

    def unsubscribe(self, subject: str, text: str) -> bool:
        with session_scope() as session:
            return unsubscribe.unsubscribe_by_mail(session, subject, text) is not None


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        return str(body.get_content())[:MAX_TEXT_CHARS]
    except (LookupError, ValueError):  # an unknown charset or a broken encoding
        return ""


def start(host: str, port: int, mailbox: str | None = None) -> Controller:
    """Starts the server in a thread of its own; `stop()` the returned controller."""
    handler = UnsubscribeMailbox(mailbox or unsubscribe_mailbox(get_channel_settings()))
    controller = Controller(
        handler, hostname=host, port=port, data_size_limit=MAX_MAIL_BYTES, ready_timeout=10
    )
    controller.start()
    return controller


def serve_forever(host: str, port: int) -> None:
    controller = start(host, port)
    log.info("unsubscribe mailbox %s listening on %s:%d", controller.handler.mailbox, host, port)
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()
