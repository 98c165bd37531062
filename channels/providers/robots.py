"""WeCom group robots and DingTalk custom robots (DingTalk signed with timestamp and secret,
HMAC-SHA256), posting text or markdown and reading their JSON error codes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote_plus

import httpx

from channels.outcome import Outcome, Result

TIMEOUT_SECONDS = 10.0
# The services' own limits on one message's content.
WECOM_MAX_BYTES = 4096
DINGTALK_MAX_BYTES = 20000
WECOM_RATE_LIMITED = 45009
DINGTALK_RATE_LIMITED = 130101


def max_bytes(kind: str) -> int:
    return WECOM_MAX_BYTES if kind == "wecom" else DINGTALK_MAX_BYTES


def dingtalk_signed_url(webhook_url: str, secret: str, timestamp_ms: int) -> str:
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    sign = quote_plus(base64.b64encode(digest).decode())
    separator = "&" if "?" in webhook_url else "?"
    return f"{webhook_url}{separator}timestamp={timestamp_ms}&sign={sign}"


def payload(kind: str, title: str, markdown: str) -> dict[str, Any]:
    if kind == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": markdown}}
    return {"msgtype": "markdown", "markdown": {"title": title, "text": markdown}}


def post(
    client: httpx.Client, kind: str, webhook_url: str, secret: str | None, title: str, markdown: str
) -> Outcome:
    url = webhook_url
    if kind == "dingtalk" and secret:
        url = dingtalk_signed_url(webhook_url, secret, int(time.time() * 1000))
    try:
        response = client.post(url, json=payload(kind, title, markdown), timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return Outcome(Result.retry, "robot_unreachable", f"{type(exc).__name__}: {exc}")
    if response.status_code >= 500:
        return Outcome(Result.retry, f"http_{response.status_code}", response.text[:300])
    try:
        answer = response.json()
    except ValueError:
        return Outcome(Result.retry, f"http_{response.status_code}", response.text[:300])
    errcode = answer.get("errcode")
    if errcode == 0:
        return Outcome.sent(None)
    reason = f"{errcode}: {answer.get('errmsg')}"
    if errcode in (WECOM_RATE_LIMITED, DINGTALK_RATE_LIMITED):
        return Outcome(Result.defer, str(errcode), reason)
    # A wrong key or signature is this robot's problem, not the channel's: fail with the reason.
    return Outcome(Result.failed, str(errcode), reason)
