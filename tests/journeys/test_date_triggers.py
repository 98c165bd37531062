"""Date-trait entry triggers with the clock moved: each contact enters once, on the right day
in its own time zone, at the trigger's time of day; passes run again (or by a restarted
scheduler) enroll nobody twice; re-entry rules hold; bad triggers are 422s naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from capture.models import Contact
from core.clock import clock
from core.db import session_scope
from journeys import date_triggers, service
from journeys.models import Enrollment
from tests.conftest import Backend
from tests.journeys.conftest import draft, make_contact
from tests.journeys.test_engine import create_published, tick
from tests.journeys.test_triggers import entry

THREE_DAYS_BEFORE_TRIAL_ENDS = {
    "type": "date_trait",
    "trait": "trial_ends_at",
    "offset_days": -3,
    "time": "09:00",
}


def date_journey(trigger: dict[str, Any], **extra: Any) -> uuid.UUID:
    return create_published({**entry(trigger), **extra})


def run_pass() -> int:
    with session_scope() as session:
        return date_triggers.start_due(session)


def entries(journey_id: uuid.UUID) -> dict[uuid.UUID, list[tuple[datetime, str | None]]]:
    """Each contact's enrollments in the journey: when they entered and under which key."""
    found: dict[uuid.UUID, list[tuple[datetime, str | None]]] = {}
    with session_scope() as session:
        rows = session.execute(
            select(Enrollment.contact_id, Enrollment.entered_at, Enrollment.entry_key)
            .where(Enrollment.journey_id == journey_id)
            .order_by(Enrollment.entered_at)
        )
        for contact_id, entered_at, key in rows:
            at = entered_at if entered_at.tzinfo else entered_at.replace(tzinfo=UTC)
            found.setdefault(contact_id, []).append((at, key))
    return found


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def test_fires_once_on_the_local_day_in_each_time_zone(backend: Backend) -> None:
    clock.freeze(utc(2, 0, 30))  # 08:30 on Monday 2 March in Shanghai
    journey = date_journey(THREE_DAYS_BEFORE_TRIAL_ENDS)
    # Ends 00:30 on 6 March in Shanghai (still 5 March in UTC): enters 3 March, 09:00 there.
    shanghai = make_contact({"trial_ends_at": "2026-03-05T16:30:00Z"}, timezone="Asia/Shanghai")
    # Ends 22:00 on 5 March in New York (6 March in UTC): enters 2 March, 09:00 there.
    new_york = make_contact(
        {"trial_ends_at": "2026-03-06T03:00:00.000Z"}, timezone="America/New_York"
    )
    # A date without a time, no time zone: 5 March in Shanghai, enters 2 March at 09:00.
    plain_date = make_contact({"trial_ends_at": "2026-03-05"})
    # A zone nobody knows counts as Shanghai: 6 March, enters 3 March.
    unknown_zone = make_contact({"trial_ends_at": "2026-03-06"}, timezone="Mars/Olympus")
    make_contact({"trial_ends_at": "2026-03-20T00:00:00Z"}, timezone="Asia/Shanghai")
    make_contact({"trial_ends_at": "2026-03-03"}, timezone="America/New_York")  # 28 February
    make_contact({"trial_ends_at": 20260305})  # not a date string
    make_contact({"plan": "trial"})

    assert run_pass() == 0  # before 09:00 in Shanghai; still 1 March in New York
    clock.freeze(utc(2, 1))  # 09:00 in Shanghai
    assert run_pass() == 1
    assert run_pass() == 0
    tick()  # the enrollment completes: re-entry after exit is allowed, the date value is not
    clock.freeze(utc(2, 13, 59))  # 08:59 in New York
    assert run_pass() == 0
    clock.freeze(utc(2, 14))  # 09:00 in New York
    assert run_pass() == 1
    clock.freeze(utc(2, 20))
    assert run_pass() == 0
    tick()
    clock.freeze(utc(3, 1, 5))  # 09:05 on 3 March in Shanghai
    assert run_pass() == 2
    for hours in range(0, 24 * 5, 5):  # the next days, passes at many hours
        clock.freeze(utc(3, 2) + timedelta(hours=hours))
        tick()
        assert run_pass() == 0

    assert entries(journey) == {
        plain_date: [(utc(2, 1), "trial_ends_at=2026-03-05")],
        new_york: [(utc(2, 14), "trial_ends_at=2026-03-05")],
        shanghai: [(utc(3, 1, 5), "trial_ends_at=2026-03-06")],
        unknown_zone: [(utc(3, 1, 5), "trial_ends_at=2026-03-06")],
    }


def test_after_and_on_the_day_and_a_new_date_value(backend: Backend) -> None:
    clock.freeze(utc(10, 2))  # 10:00 in Shanghai
    week_after = date_journey({"type": "date_trait", "trait": "signed_up_at", "offset_days": 7})
    on_the_day = date_journey({"type": "date_trait", "trait": "renews_on", "time": "00:00"})
    signed_up = make_contact({"signed_up_at": "2026-03-03T05:00:00Z", "renews_on": "2026-03-10"})
    assert run_pass() == 2
    assert set(entries(week_after)) == set(entries(on_the_day)) == {signed_up}
    tick()

    # The renewal moves to a new date: the contact enters again, on that day.
    with session_scope() as session:
        contact = session.get_one(Contact, signed_up)
        contact.traits = {**contact.traits, "renews_on": "2026-03-12"}
    assert run_pass() == 0
    clock.freeze(utc(11, 16))  # 00:00 on 12 March in Shanghai
    assert run_pass() == 1
    assert [key for _, key in entries(on_the_day)[signed_up]] == [
        "renews_on=2026-03-10",
        "renews_on=2026-03-12",
    ]


def test_reentry_rules_and_one_running_enrollment_hold(backend: Backend) -> None:
    clock.freeze(utc(2, 1))
    once = date_journey(THREE_DAYS_BEFORE_TRIAL_ENDS, reentry={"mode": "once"})
    waits = create_published(
        {
            "trigger": THREE_DAYS_BEFORE_TRIAL_ENDS,
            "start": "pause",
            "nodes": [
                {"id": "pause", "type": "wait", "duration": {"days": 30}, "next": "end"},
                {"id": "end", "type": "exit"},
            ],
        }
    )
    earlier = make_contact({"trial_ends_at": "2026-03-05"})
    running = make_contact({"trial_ends_at": "2026-03-05"})
    with session_scope() as session:
        service.enroll_contact(session, once, earlier)
        service.enroll_contact(session, waits, running)
    tick()  # `earlier` is done with `once`; `running` now waits 30 days in `waits`
    assert run_pass() == 2
    key = "trial_ends_at=2026-03-05"
    assert {c: [k for _, k in found] for c, found in entries(once).items()} == {
        earlier: [None],  # once ever
        running: [key],
    }
    assert {c: [k for _, k in found] for c, found in entries(waits).items()} == {
        running: [None],  # at most one running enrollment
        earlier: [key],
    }


@pytest.mark.parametrize(
    ("trigger", "field", "words"),
    [
        ({"type": "date_trait"}, "trigger.trait", "ISO-8601"),
        ({"type": "date_trait", "trait": "ends at"}, "trigger.trait", "ISO-8601"),
        ({"type": "date_trait", "trait": "t", "offset_days": 4000}, "trigger.offset_days", "3650"),
        ({"type": "date_trait", "trait": "t", "offset_days": "-3"}, "trigger.offset_days", "whole"),
        ({"type": "date_trait", "trait": "t", "offset_days": 1.5}, "trigger.offset_days", "whole"),
        ({"type": "date_trait", "trait": "t", "time": "9am"}, "trigger.time", "HH:MM"),
        ({"type": "date_trait", "trait": "t", "time": "24:00"}, "trigger.time", "HH:MM"),
    ],
)
def test_a_bad_date_trigger_is_a_422_naming_the_field(
    backend: Backend, client: TestClient, trigger: dict[str, Any], field: str, words: str
) -> None:
    journey_id, headers = draft(client, entry(trigger))
    response = client.post(f"/api/v1/journeys/{journey_id}/publish", headers=headers)
    assert response.status_code == 422
    assert words in response.json()["error"]["fields"][field]
    assert client.get(f"/api/v1/journeys/{journey_id}", headers=headers).json()["status"] == (
        "draft"
    )


def test_dry_run_explains_when_the_date_trigger_fires(backend: Backend, client: TestClient) -> None:
    clock.freeze(utc(2, 1))
    journey_id, headers = draft(client, entry(THREE_DAYS_BEFORE_TRIAL_ENDS))
    made_up = {
        "contact": {
            "traits": {"trial_ends_at": "2026-03-06T03:00:00Z"},
            "timezone": "America/New_York",
        }
    }
    answer = client.post(
        f"/api/v1/journeys/{journey_id}/dry-run", json=made_up, headers=headers
    ).json()
    assert answer["entry"] == (
        "enters 3 days before trial_ends_at at 09:00 America/New_York:"
        " trial_ends_at is 2026-03-05 there, so on 2026-03-02"
    )
    assert [line["node"] for line in answer["path"]] == ["end"]


def test_the_pass_is_a_beat_task() -> None:
    from worker.app import celery_app

    celery_app.loader.import_default_modules()
    schedule = {beat["task"] for beat in celery_app.conf.beat_schedule.values()}
    assert "journeys.start_date_triggers" in schedule
    assert "journeys.start_date_triggers" in celery_app.tasks
