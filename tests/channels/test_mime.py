"""How a composed email's text parts go on the wire: 7bit where SMTP can carry them as they
are, base64 for everything else, and the same text back out of any mail parser."""

from __future__ import annotations

import email
from email.message import Message

from channels.emails import MAX_LINE, multipart_alternative


def parts_of(plain: str, html: str) -> list[Message]:
    data = multipart_alternative(
        [("Content-Type", 'multipart/alternative; boundary="b0"'), ("Subject", "Hi")],
        "b0",
        [("plain", plain), ("html", html)],
    )
    assert all(len(line) <= MAX_LINE for line in data.split(b"\r\n"))
    return [part for part in email.message_from_bytes(data).walk() if not part.is_multipart()]


def decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8").replace("\r\n", "\n")


def test_ascii_text_with_short_lines_goes_as_it_is() -> None:
    plain, html = parts_of("Hello\nsee pricing\n.a line with a dot", "<p>Hi</p>\n<p>there</p>\n")
    assert plain["Content-Transfer-Encoding"] == "7bit"
    assert html["Content-Transfer-Encoding"] == "7bit"
    assert decoded(plain) == "Hello\nsee pricing\n.a line with a dot"
    assert decoded(html) == "<p>Hi</p>\n<p>there</p>\n"


def test_chinese_text_and_overlong_lines_go_as_base64() -> None:
    long_line = "<p>" + "x" * MAX_LINE + "</p>"
    plain, html = parts_of("您好，请查看价格", long_line)
    assert plain["Content-Transfer-Encoding"] == "base64"
    assert html["Content-Transfer-Encoding"] == "base64"
    assert decoded(plain) == "您好，请查看价格"
    assert decoded(html) == long_line
