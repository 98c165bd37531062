"""Email over SMTP with one pooled connection per worker process: reconnects when the server
drops it, and starts a fresh one after a set number of messages."""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import threading
from contextlib import suppress
from functools import lru_cache

from channels.outcome import Outcome, Result
from channels.settings import ChannelSettings


def classify_reply(code: int, message: bytes | str) -> Outcome:
    """5xx is a permanent rejection of the address (hard bounce), 4xx a temporary one."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    reason = f"{code} {text}".strip()
    if 500 <= code < 600:
        return Outcome(Result.hard_bounce, code=str(code), reason=reason)
    if 400 <= code < 500:
        return Outcome(Result.soft_bounce, code=str(code), reason=reason)
    return Outcome(Result.retry, code=str(code), reason=reason)


class SmtpConnection:
    """A lazily opened SMTP session, reused for up to `max_messages` messages."""

    def __init__(self, settings: ChannelSettings, reuse: bool = True) -> None:
        self.settings = settings
        self.reuse = reuse
        self._smtp: smtplib.SMTP | None = None
        self._sent_on_connection = 0
        self._lock = threading.Lock()

    def _open(self) -> smtplib.SMTP:
        s = self.settings
        smtp: smtplib.SMTP
        if s.smtp_tls == "ssl":
            smtp = smtplib.SMTP_SSL(
                s.smtp_host,
                s.smtp_port,
                timeout=s.smtp_timeout_seconds,
                context=ssl.create_default_context(cafile=s.smtp_ca_file),
            )
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
        try:
            if s.smtp_tls == "starttls":
                smtp.starttls(context=ssl.create_default_context(cafile=s.smtp_ca_file))
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
        except (smtplib.SMTPException, OSError):
            smtp.close()
            raise
        self._sent_on_connection = 0
        return smtp

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def send(self, data: bytes, message_id: str, sender: str, recipient: str) -> Outcome:
        with self._lock:
            try:
                return self._send_reconnecting(data, message_id, sender, recipient)
            finally:
                if not self.reuse:
                    self.close()

    def _send_reconnecting(
        self, data: bytes, message_id: str, sender: str, recipient: str
    ) -> Outcome:
        # A pooled connection may have been closed by the server while idle: one fresh retry.
        for attempt in range(2):
            if (
                self._smtp is None
                or self._sent_on_connection >= self.settings.smtp_messages_per_connection
            ):
                self.close()
                try:
                    self._smtp = self._open()
                except smtplib.SMTPAuthenticationError as exc:
                    return Outcome(Result.account_problem, "smtp_auth", str(exc))
                except (smtplib.SMTPException, OSError) as exc:
                    return Outcome(Result.retry, "smtp_connect", str(exc))
            try:
                send_one(self._smtp, sender, recipient, data)
            except smtplib.SMTPRecipientsRefused as exc:
                code, reply = exc.recipients[recipient]
                return classify_reply(code, reply)
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                return classify_reply(exc.smtp_code, exc.smtp_error)
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as exc:
                self.close()
                if attempt == 0:
                    continue
                return Outcome(Result.retry, "smtp_disconnected", str(exc))
            except smtplib.SMTPResponseException as exc:
                self.close()
                return classify_reply(exc.smtp_code, exc.smtp_error)
            self._sent_on_connection += 1
            return Outcome.sent(message_id)
        return Outcome(Result.retry, "smtp_disconnected", "the server closed the connection")


def send_one(smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> None:
    """smtplib's `sendmail` for one recipient, raising the same exceptions, without parsing
    both envelope addresses with email.utils for every message (~50 µs an email, a fortieth
    of a worker's CPU per email)."""
    smtp.ehlo_or_helo_if_needed()
    size = f" size={len(data)}" if smtp.does_esmtp and smtp.has_extn("size") else ""
    smtp.putcmd("mail", f"from:{envelope_address(sender)}{size}")
    code, reply = smtp.getreply()
    if code != 250:
        _abandon(smtp, code)
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    smtp.putcmd("rcpt", f"to:{envelope_address(recipient)}")
    code, reply = smtp.getreply()
    if code not in (250, 251):
        _abandon(smtp, code)
        raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
    code, reply = smtp.data(data)
    if code != 250:
        _abandon(smtp, code)
        raise smtplib.SMTPDataError(code, reply)


# A bare address of dot-atoms, as normalised contact addresses are: smtplib would quote it as
# it is.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


def envelope_address(address: str) -> str:
    """The address as MAIL FROM and RCPT TO carry it, as smtplib.quoteaddr gives it."""
    if PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return _quoted(address)


@lru_cache(maxsize=256)
def _quoted(address: str) -> str:
    # The sender, with its display name, is the same for every message.
    return smtplib.quoteaddr(address)


def _abandon(smtp: smtplib.SMTP, code: int) -> None:
    """After a refusal: 421 means the server is closing the session, anything else leaves it
    usable once the transaction is reset."""
    if code == 421:
        smtp.close()
    else:
        with suppress(smtplib.SMTPServerDisconnected):
            smtp.rset()


_pool: SmtpConnection | None = None


def get_connection(settings: ChannelSettings) -> SmtpConnection:
    global _pool
    if _pool is None or _pool.settings is not settings:
        if _pool is not None:
            _pool.close()
        _pool = SmtpConnection(settings)
    return _pool


def reset_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.close()
    _pool = None


def _forget_after_fork() -> None:
    # A child process must not share its parent's socket; it opens its own on first send.
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_after_fork)
