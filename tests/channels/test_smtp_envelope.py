"""The SMTP provider's own envelope: addresses quoted as smtplib quotes them, and refusals at
MAIL, RCPT and DATA answered as smtplib's sendmail answers them, on a real aiosmtpd server."""

from __future__ import annotations

import smtplib

import pytest

from channels.outcome import Result
from channels.providers.smtp import SmtpConnection, envelope_address
from channels.settings import ChannelSettings
from tests.channels.fakes import MailHandler

SENDER = "Acme Marketing <news@acme.example>"
MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"


@pytest.mark.parametrize(
    "address",
    [
        "reader@example.cn",
        "first.last+tag@mail.example.com",
        "o'brien@example.ie",
        "Acme Marketing <news@acme.example>",
        '"Wang, Wei" <wang.wei@example.cn>',
        "<already@quoted.example>",
        '"quoted local"@example.com',
        "name@[127.0.0.1]",
        "王伟@例子.中国",
        "no-at-sign",
        "",
    ],
)
def test_envelope_addresses_are_quoted_as_smtplib_quotes_them(address: str) -> None:
    assert envelope_address(address) == smtplib.quoteaddr(address)


@pytest.fixture
def connection(smtp_server: tuple[int, MailHandler]) -> SmtpConnection:
    port, handler = smtp_server
    handler.reset()
    settings = ChannelSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none")
    return SmtpConnection(settings)


def send(connection: SmtpConnection, recipient: str, sender: str = SENDER) -> Result:
    return connection.send(MESSAGE, "<m@acme.example>", sender, recipient).result


def test_a_message_goes_out_with_the_envelope_smtplib_would_give(
    connection: SmtpConnection, smtp_server: tuple[int, MailHandler]
) -> None:
    _, mailbox = smtp_server
    assert send(connection, "reader@example.cn") is Result.sent
    mail = mailbox.messages[-1]
    assert (mail.sender, mail.recipients) == ("news@acme.example", ["reader@example.cn"])
    assert mail.data.endswith(b"Hello.\r\n")


def test_refusals_at_each_step_are_classified_and_leave_the_connection_usable(
    connection: SmtpConnection, smtp_server: tuple[int, MailHandler]
) -> None:
    _, mailbox = smtp_server
    mailbox.rejections["gone@example.cn"] = "550 5.1.1 User unknown"
    mailbox.data_rejections["full@example.cn"] = "452 4.2.2 Mailbox full"
    mailbox.sender_rejections["blocked@acme.example"] = "553 5.7.1 Sender not allowed"
    connections = mailbox.connections

    assert send(connection, "gone@example.cn") is Result.hard_bounce
    assert send(connection, "full@example.cn") is Result.soft_bounce
    assert send(connection, "reader@example.cn", sender="blocked@acme.example") is (
        Result.hard_bounce
    )
    assert send(connection, "reader@example.cn") is Result.sent
    # Every refusal reset the transaction; the session itself carried on.
    assert mailbox.connections == connections + 1
    assert [mail.recipients for mail in mailbox.messages] == [["reader@example.cn"]]


def test_a_server_closing_the_session_is_reconnected_for_the_next_message(
    connection: SmtpConnection, smtp_server: tuple[int, MailHandler]
) -> None:
    _, mailbox = smtp_server
    mailbox.data_rejections["late@example.cn"] = "421 4.3.2 Shutting down"
    connections = mailbox.connections

    assert send(connection, "late@example.cn") is Result.soft_bounce
    assert send(connection, "reader@example.cn") is Result.sent
    assert mailbox.connections == connections + 2
