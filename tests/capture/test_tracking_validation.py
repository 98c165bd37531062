"""The per-message checks of the tracking API: the quick check for the usual message passes
nothing the full check would refuse, and passes the usual messages of real clients."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capture.tracking import MESSAGE_TYPES, is_plainly_valid, message_problems

FIELDS = (
    "type",
    "userId",
    "anonymousId",
    "messageId",
    "groupId",
    "previousId",
    "event",
    "name",
    "properties",
    "traits",
    "context",
    "integrations",
    "timestamp",
    "sentAt",
)
TEXTS = st.one_of(
    st.sampled_from(["", "u-1", "Signed Up", "x" * 200, "x" * 201, "a\nb", "a\x7fb", "页面"]),
    st.text(max_size=8),
)
TIMESTAMPS = st.sampled_from(
    [
        "2026-03-01T12:00:00Z",
        "2026-03-01T12:00:00.123+08:00",
        "2026-03-01",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "yesterday",
        "2026-03-01T12:00:00" + "0" * 40,
    ]
)
VALUES = st.one_of(
    st.none(),
    TEXTS,
    TIMESTAMPS,
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.integers(-5, 5),
    st.floats(allow_nan=False),
    st.booleans(),
    st.just({}),
    st.just({"k": "v"}),
    st.just([]),
)
USUAL = {
    "type": "track",
    "userId": "u-1",
    "event": "Signed Up",
    "messageId": "m-1",
    "timestamp": "2026-03-01T12:00:00Z",
    "context": {"ip": "203.0.113.9"},
}
# Usual messages with a few fields changed or removed: most are near the edge of valid.
MESSAGES = st.tuples(
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4),
    st.sets(st.sampled_from(FIELDS), max_size=3),
).map(
    lambda change: {
        field: value for field, value in {**USUAL, **change[0]}.items() if field not in change[1]
    }
)


@settings(max_examples=3000, deadline=None)
@given(MESSAGES)
def test_the_quick_check_passes_nothing_the_full_check_refuses(message: dict[str, Any]) -> None:
    if is_plainly_valid(message):
        assert message_problems(message, None) == {}


def test_the_usual_messages_of_a_segment_client_take_the_quick_check() -> None:
    shared = {
        "messageId": "008a05a6-c464-4159-8324-c9859b810e76",
        "timestamp": "2026-11-19T05:22:57.797+00:00",
        "sentAt": "2026-11-19T05:22:59.619+00:00",
        "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
        "integrations": {},
    }
    batch = [
        {**shared, "type": "page", "anonymousId": "a-1", "name": "白皮书下载", "properties": {}},
        {**shared, "type": "track", "userId": "u-1", "event": "Viewed Pricing"},
        {**shared, "type": "identify", "userId": "u-1", "traits": {"email": "a@example.cn"}},
        {**shared, "type": "screen", "anonymousId": "a-1", "userId": "u-1", "name": "Home"},
    ]

    assert all(is_plainly_valid(message) for message in batch)


def test_messages_the_quick_check_leaves_to_the_full_check() -> None:
    usual = {"type": "track", "userId": "u", "event": "E", "messageId": "m"}
    left: list[dict[str, Any]] = [
        {**usual, "messageId": None},  # valid, but gets its id given at capture
        {**usual, "type": "group", "groupId": "g"},  # valid, needs the type's own ids
        {**usual, "userId": ""},  # valid only through anonymousId, which is missing
        {**usual, "timestamp": "0001-01-01T00:00:00+01:00"},  # outside the calendar in UTC
        {**usual, "event": 7},
    ]

    assert is_plainly_valid(usual)
    assert not any(is_plainly_valid(message) for message in left)
