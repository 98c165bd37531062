"""What a provider call came to, in the terms the delivery record needs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Result(StrEnum):
    sent = "sent"  # accepted by the provider
    delivered = "delivered"  # the provider confirmed delivery (e.g. found by QuerySendDetails)
    retry = "retry"  # transient: try again with backoff
    defer = "defer"  # flow control: try again at `until`
    failed = "failed"  # permanent: record the reason, never retry
    hard_bounce = "hard_bounce"  # the address does not exist: suppress it
    soft_bounce = "soft_bounce"  # temporary rejection: retry, suppress after repeated ones
    invalid_address = "invalid_address"  # e.g. an illegal phone number: mark it invalid
    account_problem = "account_problem"  # balance, suspended account: pause the channel


@dataclass(frozen=True)
class Outcome:
    result: Result
    code: str | None = None
    reason: str | None = None
    message_id: str | None = None
    until: datetime | None = None

    @classmethod
    def sent(cls, message_id: str | None) -> Outcome:
        return cls(Result.sent, message_id=message_id)
