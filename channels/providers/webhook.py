"""Outgoing webhooks: a JSON body signed with HMAC-SHA256 over `timestamp.body`, so receivers
can check both who sent it and that it is fresh."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from channels.outcome import Outcome, Result

SIGNATURE_HEADER = "X-Nurture-Signature"
TIMESTAMP_HEADER = "X-Nurture-Timestamp"
DELIVERY_HEADER = "X-Nurture-Delivery"
TIMEOUT_SECONDS = 10.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def post(client: httpx.Client, url: str, secret: str, body: bytes, delivery_id: str) -> Outcome:
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        DELIVERY_HEADER: delivery_id,
    }
    try:
        response = client.post(url, content=body, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return Outcome(Result.retry, "webhook_unreachable", f"{type(exc).__name__}: {exc}")
    if 200 <= response.status_code < 300:
        return Outcome.sent(response.headers.get("X-Request-Id"))
    reason = f"HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code == 410:
        return Outcome(Result.failed, "webhook_gone", reason)
    return Outcome(Result.retry, f"http_{response.status_code}", reason)


_client: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One keep-alive client per process (redirects are not followed: a webhook must answer)."""
    global _client
    if _client is None:
        _client = httpx.Client(follow_redirects=False)
    return _client
