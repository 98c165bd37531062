"""The journey engine: definitions validated by node and field, a nurture journey run with
the clock moved instead of sleeping, versions, re-entry, splits, goals and the scheduler."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from api.errors import ApiError
from capture.models import Contact, Event
from channels.models import Delivery, Robot, Template, WebhookEndpoint
from core import feed
from core.clock import clock
from core.db import get_sessionmaker, session_scope
from journeys import engine, segments, service
from journeys.definition import DefinitionError, validate
from journeys.models import Enrollment, EnrollmentStep, SegmentMember
from tests.conftest import Backend
from tests.journeys.conftest import T0, dispatch, make_contact, make_event, publish


@pytest.fixture
def handoffs() -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def hand_off(session: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"assigned": True}

    registered = list(engine._handoff)
    engine.register_handoff(hand_off)
    yield calls
    engine._handoff[:] = registered


def make_template(channel: str = "email") -> str:
    with session_scope() as session:
        template = Template(
            name=f"{channel} template",
            channel=channel,
            subject="Hello" if channel == "email" else None,
            html="<p>Hi</p>" if channel == "email" else None,
            body="Hi" if channel == "sms" else None,
            provider_template_code="SMS_1" if channel == "sms" else None,
        )
        session.add(template)
        session.flush()
        return str(template.id)


def nurture(welcome: str, reminder: str, sms: str) -> dict[str, Any]:
    return {
        "trigger": {
            "type": "event",
            "event": "Form Submitted",
            "where": [{"field": "properties.form_id", "op": "eq", "value": "demo"}],
        },
        "start": "welcome",
        "nodes": [
            {"id": "welcome", "type": "send_email", "template_id": welcome, "next": "pause"},
            {"id": "pause", "type": "wait", "duration": {"days": 2}, "next": "clicked"},
            {
                "id": "clicked",
                "type": "condition",
                "condition": {"event": "Email Clicked", "within_days": 3},
                "yes": "text",
                "no": "remind",
            },
            {"id": "text", "type": "send_sms", "template_id": sms, "next": "pricing"},
            {"id": "remind", "type": "send_email", "template_id": reminder, "next": "pricing"},
            {
                "id": "pricing",
                "type": "wait_for_event",
                "event": "Page Viewed",
                "where": [{"field": "url", "op": "contains", "value": "/pricing"}],
                "timeout": {"days": 7},
                "matched": "sales",
                "timed_out": "done",
            },
            {"id": "sales", "type": "handoff", "reason": "visited pricing"},
            {"id": "done", "type": "exit"},
        ],
    }


def create_published(definition: dict[str, Any], name: str = "Nurture") -> uuid.UUID:
    with session_scope() as session:
        journey = service.create_journey(session, name, definition)
        service.publish(session, journey.id)
        return journey.id


def tick() -> int:
    dispatch()
    with session_scope() as session:
        return engine.run_due(session)


def submit_form(contact_id: uuid.UUID, form_id: str = "demo") -> None:
    make_event(contact_id, "Form Submitted", {"form_id": form_id})
    publish(feed.EVENT_STORED, contact_id, {"event_id": last_event_id(), "name": "Form Submitted"})


def last_event_id() -> int:
    with session_scope() as session:
        return int(session.scalar(select(Event.id).order_by(Event.id.desc()).limit(1)) or 0)


def event(contact_id: uuid.UUID, name: str, **columns: Any) -> None:
    make_event(contact_id, name, **columns)
    publish(feed.EVENT_STORED, contact_id, {"event_id": last_event_id(), "name": name})


def enrollment_of(contact_id: uuid.UUID, journey_id: uuid.UUID | None = None) -> Enrollment:
    query = select(Enrollment).where(Enrollment.contact_id == contact_id)
    if journey_id is not None:
        query = query.where(Enrollment.journey_id == journey_id)
    with session_scope() as session:
        found = session.scalars(query.order_by(Enrollment.entered_at.desc())).first()
        assert found is not None
        return found


def path_of(contact_id: uuid.UUID) -> list[tuple[str, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(EnrollmentStep.node_id, EnrollmentStep.result)
            .join(Enrollment, Enrollment.id == EnrollmentStep.enrollment_id)
            .where(Enrollment.contact_id == contact_id)
            .order_by(EnrollmentStep.id)
        )
        return [(r.node_id, r.result) for r in rows]


def deliveries(contact_id: uuid.UUID) -> list[tuple[str, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(Delivery.channel, Delivery.idempotency_key)
            .where(Delivery.contact_id == contact_id)
            .order_by(Delivery.created_at, Delivery.idempotency_key)
        )
        return [(r.channel, r.idempotency_key) for r in rows]


def test_validation_names_node_and_field(backend: Backend) -> None:
    welcome = make_template()
    good = nurture(welcome, welcome, make_template("sms"))
    with session_scope() as session:
        assert validate(session, good) is good

    def problems(change: Any) -> dict[str, str]:
        broken = nurture(welcome, welcome, make_template("sms"))
        change(broken)
        with session_scope() as session, pytest.raises(DefinitionError) as caught:
            validate(session, broken)
        return caught.value.fields

    def node(definition: dict[str, Any], node_id: str) -> dict[str, Any]:
        return next(n for n in definition["nodes"] if n["id"] == node_id)

    assert (
        "unknown node type 'teleport'"
        in problems(lambda d: node(d, "text").update(type="teleport"))["nodes.text.type"]
    )
    assert (
        "not a node"
        in problems(lambda d: node(d, "remind").update(next="nowhere"))["nodes.remind.next"]
    )
    assert problems(lambda d: node(d, "clicked").update(yes="remind"))["nodes.text"] == (
        "is unreachable from the start node"
    )
    loop = problems(lambda d: node(d, "remind").update(next="clicked"))
    assert "loop without a wait" in next(iter(loop.values()))
    missing = str(uuid.uuid4())
    assert (
        "does not exist"
        in problems(lambda d: node(d, "welcome").update(template_id=missing))[
            "nodes.welcome.template_id"
        ]
    )
    assert (
        "not sms"
        in problems(lambda d: node(d, "text").update(template_id=welcome))["nodes.text.template_id"]
    )
    assert (
        "unknown operator"
        in problems(
            lambda d: node(d, "clicked").update(
                condition={"field": "email", "op": "near", "value": 1}
            )
        )["nodes.clicked.condition.op"]
    )
    assert (
        "add up to 100"
        in problems(
            lambda d: node(d, "text").update(
                type="split",
                branches=[{"percent": 60, "next": "pricing"}, {"percent": 60, "next": "done"}],
            )
        )["nodes.text.branches"]
    )
    assert "trigger.where[0].op" in problems(lambda d: d["trigger"]["where"][0].update(op="bogus"))
    # A loop through a wait is fine.
    with session_scope() as session:
        looping = nurture(welcome, welcome, make_template("sms"))
        node(looping, "remind").update(next="pause")
        validate(session, looping)


def test_nurture_journey_runs_with_time_travel(
    backend: Backend, handoffs: list[dict[str, Any]]
) -> None:
    clock.freeze(T0)
    welcome, reminder, sms = make_template(), make_template(), make_template("sms")
    journey_id = create_published(nurture(welcome, reminder, sms))
    keen = make_contact(email="keen@example.com", phone="+8613800138000")
    quiet = make_contact(email="quiet@example.com")
    other_form = make_contact(email="other@example.com")

    submit_form(keen)
    submit_form(quiet)
    submit_form(other_form, form_id="newsletter")
    assert tick() == 2
    assert path_of(keen) == [("welcome", "done"), ("pause", "waiting")]
    assert path_of(other_form) == []
    assert enrollment_of(keen).next_run_at == T0 + timedelta(days=2)

    clock.advance(timedelta(days=1))
    event(keen, "Email Clicked")
    assert tick() == 0  # nobody is due before the two days are over

    clock.advance(timedelta(days=1))
    assert tick() == 2
    assert path_of(keen)[2:] == [
        ("pause", "done"),
        ("clicked", "done"),
        ("text", "done"),
        ("pricing", "waiting"),
    ]
    assert [n for n, _ in path_of(quiet)][4:6] == ["remind", "pricing"]

    clock.advance(timedelta(days=3))
    event(keen, "Page Viewed", url="https://example.com/pricing")
    assert tick() == 1  # the visit wakes the waiting contact at once
    keen_enrollment = enrollment_of(keen)
    assert keen_enrollment.status == "completed"
    assert path_of(keen)[-2:] == [("pricing", "done"), ("sales", "done")]
    assert handoffs == [
        {
            "contact_id": keen,
            "journey_id": journey_id,
            "enrollment_id": keen_enrollment.id,
            "reason": "visited pricing",
            "idempotency_key": f"{keen_enrollment.id}:sales:1",
        }
    ]

    clock.advance(timedelta(days=4))
    assert tick() == 1
    assert enrollment_of(quiet).status == "exited"
    assert path_of(quiet)[-2:] == [("pricing", "done"), ("done", "done")]

    assert [c for c, _ in deliveries(keen)] == ["email", "sms"]
    assert [k.split(":", 1)[1] for _, k in deliveries(quiet)] == ["welcome:1", "remind:1"]

    with session_scope() as session:
        stats = service.stats(session, journey_id)
    assert (stats["enrolled"], stats["completed"], stats["exited"]) == (2, 1, 1)
    assert stats["nodes"]["clicked"]["branches"] == {"yes": 1, "no": 1}
    assert stats["nodes"]["pricing"]["branches"] == {"matched": 1, "timed_out": 1}
    assert stats["nodes"]["welcome"] == {
        "entered": 2,
        "waiting": 0,
        "completed": 2,
        "failed": 0,
        "branches": {},
    }


def test_editing_a_published_journey_keeps_contacts_in_flight_on_their_version(
    backend: Backend,
) -> None:
    clock.freeze(T0)
    template = make_template()
    first = {
        "trigger": {"type": "manual"},
        "start": "hold",
        "nodes": [
            {"id": "hold", "type": "wait", "duration": {"hours": 1}, "next": "mail"},
            {"id": "mail", "type": "send_email", "template_id": template},
        ],
    }
    journey_id = create_published(first)
    early = make_contact()
    late = make_contact()
    with session_scope() as session:
        service.enroll_contact(session, journey_id, early)
    tick()
    second = {**first, "nodes": [{"id": "hold", "type": "update_contact", "add_tags": ["v2"]}]}
    with session_scope() as session:
        service.update_draft(session, journey_id, None, second)
        version = service.publish(session, journey_id)
        assert version.number == 2
        service.enroll_contact(session, journey_id, late)
    clock.advance(timedelta(hours=1))
    tick()
    assert path_of(early)[-1] == ("mail", "done")
    assert path_of(late) == [("hold", "done")]
    with session_scope() as session:
        assert session.get(Contact, late).tags == ["v2"]  # type: ignore[union-attr]
    assert enrollment_of(early).version_id != enrollment_of(late).version_id


def test_contacts_in_flight_move_to_a_new_version_only_when_migrated(backend: Backend) -> None:
    clock.freeze(T0)
    first = {
        "trigger": {"type": "manual"},
        "start": "hold",
        "nodes": [
            {"id": "hold", "type": "wait", "duration": {"hours": 1}, "next": "old"},
            {"id": "old", "type": "update_contact", "add_tags": ["v1"]},
        ],
    }
    journey_id = create_published(first)
    holding, elsewhere = make_contact(), make_contact()
    with session_scope() as session:
        service.enroll_contact(session, journey_id, holding)
        service.enroll_contact(session, journey_id, elsewhere)
    tick()
    with session_scope() as session:
        session.execute(
            update(Enrollment)
            .where(Enrollment.contact_id == elsewhere)
            .values(current_node="old", status="active", next_run_at=T0 + timedelta(hours=1))
        )
    second = {
        **first,
        "nodes": [
            {"id": "hold", "type": "wait", "duration": {"hours": 1}, "next": "new"},
            {"id": "new", "type": "update_contact", "add_tags": ["v2"]},
        ],
    }
    with session_scope() as session:
        service.update_draft(session, journey_id, None, second)
        service.publish(session, journey_id)
        assert service.migrate_enrollments(session, journey_id) == (1, 1)
    clock.advance(timedelta(hours=1))
    tick()
    with session_scope() as session:
        tags = {c.id: c.tags for c in session.scalars(select(Contact))}
    assert tags == {holding: ["v2"], elsewhere: ["v1"]}


def test_lifecycle_refusals_change_nothing(backend: Backend) -> None:
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "manual"},
        "start": "end",
        "nodes": [{"id": "end", "type": "exit"}],
    }
    journey_id = create_published(definition)
    contact = make_contact()
    with session_scope() as session:
        service.pause(session, journey_id)
    with session_scope() as session:
        with pytest.raises(ApiError, match="resume it first"):
            service.publish(session, journey_id)
        with pytest.raises(ApiError, match="takes no enrollments"):
            service.enroll_contact(session, journey_id, contact)
    with session_scope() as session:
        service.resume(session, journey_id)
        service.enroll_contact(session, journey_id, contact)
    with session_scope() as session, pytest.raises(ApiError, match="already in this journey"):
        service.enroll_contact(session, journey_id, contact)
    with session_scope() as session:
        service.archive(session, journey_id)
    assert enrollment_of(contact).status == "exited"


@pytest.mark.parametrize(
    ("reentry", "gap_hours", "expected"),
    [
        ({"mode": "once"}, 48, 1),
        ({"mode": "after_exit"}, 0, 2),
        ({"mode": "every", "min_gap_hours": 24}, 12, 1),
        ({"mode": "every", "min_gap_hours": 24}, 25, 2),
    ],
)
def test_reentry_rules(
    backend: Backend, reentry: dict[str, Any], gap_hours: int, expected: int
) -> None:
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "event", "event": "Signed Up"},
        "reentry": reentry,
        "start": "end",
        "nodes": [{"id": "end", "type": "exit"}],
    }
    create_published(definition)
    contact = make_contact()
    event(contact, "Signed Up")
    event(contact, "Signed Up")  # still running: at most one active enrollment
    tick()
    clock.advance(timedelta(hours=gap_hours))
    event(contact, "Signed Up")
    tick()
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(Enrollment).where(Enrollment.contact_id == contact)
        )
    assert count == expected


def test_split_is_deterministic_per_contact_and_goal_converts(backend: Backend) -> None:
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "manual"},
        "goal": {"field": "lifecycle_stage", "op": "eq", "value": "customer"},
        "start": "ab",
        "nodes": [
            {
                "id": "ab",
                "type": "split",
                "branches": [{"percent": 30, "next": "a"}, {"percent": 70, "next": "b"}],
            },
            {"id": "a", "type": "update_contact", "traits": {"arm": "a"}, "next": "stage"},
            {"id": "b", "type": "update_contact", "traits": {"arm": "b"}, "next": "stage"},
            {"id": "stage", "type": "set_lifecycle_stage", "stage": "customer", "next": "never"},
            {"id": "never", "type": "update_contact", "add_tags": ["unreached"]},
        ],
    }
    journey_id = create_published(definition)
    contacts = [make_contact() for _ in range(60)]
    with session_scope() as session:
        for contact in contacts:
            service.enroll_contact(session, journey_id, contact)
    tick()
    with session_scope() as session:
        arms = {c.id: c.traits["arm"] for c in session.scalars(select(Contact))}
        stats = service.stats(session, journey_id)
    for contact in contacts:
        index = engine.split_branch(journey_id, contact, definition["nodes"][0])
        assert arms[contact] == "ab"[index]
    assert 5 <= list(arms.values()).count("a") <= 30
    assert stats["converted"] == 60 and stats["conversion_rate"] == 1.0
    assert set(stats["nodes"]["ab"]["branches"]) == {"0", "1"}
    assert stats["nodes"]["never"]["entered"] == 0


def test_wait_until_time_of_day_in_the_contacts_time_zone() -> None:
    monday_noon_utc = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 20:00 in Shanghai
    shanghai = engine.next_time_of_day(monday_noon_utc, "09:30", [1, 2, 3, 4, 5], None)
    assert shanghai == datetime(2026, 3, 3, 1, 30, tzinfo=UTC)
    berlin = engine.next_time_of_day(monday_noon_utc, "09:30", [6], "Europe/Berlin")
    assert berlin == datetime(2026, 3, 7, 8, 30, tzinfo=UTC)
    unknown = engine.next_time_of_day(monday_noon_utc, "21:00", None, "Mars/Olympus")
    assert unknown == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


def test_a_claimed_step_that_was_lost_is_claimed_again_and_sends_once(backend: Backend) -> None:
    clock.freeze(T0)
    template = make_template()
    definition = {
        "trigger": {"type": "manual"},
        "start": "mail",
        "nodes": [{"id": "mail", "type": "send_email", "template_id": template}],
    }
    journey_id = create_published(definition)
    contact = make_contact(email="c@example.com")
    with session_scope() as session:
        service.enroll_contact(session, journey_id, contact)
    with session_scope() as session:
        claimed = engine.claim_due(session)
    assert len(claimed) == 1  # ... and the worker holding it dies before advancing
    with session_scope() as session:
        assert engine.claim_due(session) == []
    clock.advance(engine.CLAIM_LEASE)
    with session_scope() as session:
        assert engine.claim_due(session) == claimed
        engine.advance(session, claimed[0])
        engine.advance(session, claimed[0])  # a redelivered task finds nothing left to do
    assert [k for _, k in deliveries(contact)] == [f"{claimed[0]}:mail:1"]
    assert path_of(contact) == [("mail", "done")]


def test_two_schedulers_never_claim_the_same_enrollment(pg_backend: Backend) -> None:
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "manual"},
        "start": "end",
        "nodes": [{"id": "end", "type": "exit"}],
    }
    journey_id = create_published(definition)
    with session_scope() as session:
        for _ in range(10):
            service.enroll_contact(session, journey_id, make_contact())
    first, second = get_sessionmaker()(), get_sessionmaker()()
    try:
        mine = engine.claim_due(first, limit=6)
        theirs = engine.claim_due(second, limit=6)
        assert len(mine) == 6 and len(theirs) == 4
        assert not set(mine) & set(theirs)
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()


def test_entering_a_segment_starts_a_journey_as_when_a_lead_becomes_mql(
    backend: Backend,
) -> None:
    clock.freeze(T0)
    lead = make_contact(lifecycle_stage="lead")
    with session_scope() as session:
        mqls = segments.create_segment(
            session, "MQLs", "dynamic", {"field": "lifecycle_stage", "op": "eq", "value": "mql"}
        )
    definition = {
        "trigger": {"type": "segment_entry", "segment_id": str(mqls.id)},
        "start": "tag",
        "nodes": [{"id": "tag", "type": "update_contact", "add_tags": ["mql-welcome"]}],
    }
    create_published(definition)
    with session_scope() as session:
        session.execute(update(Contact).where(Contact.id == lead).values(lifecycle_stage="mql"))
    publish(feed.TRAITS_CHANGED, lead, {"changed": ["lifecycle_stage"]})
    tick()
    assert path_of(lead) == [("tag", "done")]


def test_celery_tasks_claim_and_advance(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    from journeys import tasks
    from worker.app import celery_app

    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "manual"},
        "start": "tag",
        "nodes": [{"id": "tag", "type": "update_contact", "add_tags": ["t"]}],
    }
    journey_id = create_published(definition)
    contact = make_contact()
    with session_scope() as session:
        service.enroll_contact(session, journey_id, contact)
    tasks.schedule.delay()
    assert enrollment_of(contact).status == "completed"


def test_list_journey_and_date_trait_actions(backend: Backend) -> None:
    clock.freeze(T0)
    with session_scope() as session:
        vip = segments.create_segment(session, "VIP", "static", None)
        leads = segments.create_segment(session, "Leads", "static", None)
    follow_up = create_published(
        {"trigger": {"type": "manual"}, "start": "end", "nodes": [{"id": "end", "type": "exit"}]},
        name="Follow-up",
    )
    definition = {
        "trigger": {"type": "manual"},
        "start": "before_trial_end",
        "nodes": [
            {
                "id": "before_trial_end",
                "type": "wait_for_date",
                "trait": "trial_ends_at",
                "offset_hours": -72,
                "next": "vip",
            },
            {"id": "vip", "type": "add_to_segment", "segment_id": str(vip.id), "next": "unlead"},
            {
                "id": "unlead",
                "type": "remove_from_segment",
                "segment_id": str(leads.id),
                "next": "chain",
            },
            {"id": "chain", "type": "enroll_in_journey", "journey_id": str(follow_up)},
        ],
    }
    journey_id = create_published(definition)
    trial = make_contact({"trial_ends_at": "2026-03-10T01:00:00+00:00"})
    undated = make_contact()
    with session_scope() as session:
        segments.add_members(session, leads.id, [trial])
        service.enroll_contact(session, journey_id, trial)
        service.enroll_contact(session, journey_id, undated)
    tick()
    assert enrollment_of(trial, journey_id).wake_at == datetime(2026, 3, 7, 1, 0, tzinfo=UTC)
    assert enrollment_of(undated, journey_id).status == "completed"  # no date: no wait
    clock.advance(timedelta(days=5))
    tick()
    assert [n for n, r in path_of(trial) if r == "done"] == [
        "before_trial_end",
        "vip",
        "unlead",
        "chain",
    ]
    with session_scope() as session:
        vip_members = set(
            session.scalars(
                select(SegmentMember.contact_id).where(SegmentMember.segment_id == vip.id)
            )
        )
        follow_ups = session.scalar(
            select(func.count()).select_from(Enrollment).where(Enrollment.journey_id == follow_up)
        )
        lead_members = session.scalar(
            select(func.count())
            .select_from(SegmentMember)
            .where(SegmentMember.segment_id == leads.id)
        )
    assert vip_members == {trial, undated}
    assert (follow_ups, lead_members) == (2, 0)


def test_webhook_and_sales_notification_go_through_channels(backend: Backend) -> None:
    clock.freeze(T0)
    with session_scope() as session:
        endpoint = WebhookEndpoint(name="CRM", url="https://crm.example.com/hook", secret="s")
        robot = Robot(name="Sales", kind="wecom", webhook_url="https://qyapi.example.com/x")
        session.add_all([endpoint, robot])
        session.flush()
        endpoint_id, robot_id = str(endpoint.id), str(robot.id)
    definition = {
        "trigger": {"type": "manual"},
        "start": "crm",
        "nodes": [
            {"id": "crm", "type": "call_webhook", "endpoint_id": endpoint_id, "next": "tell"},
            {"id": "tell", "type": "notify_sales", "robot_id": robot_id},
        ],
    }
    with session_scope() as session:
        wrong = {**definition, "nodes": [{**definition["nodes"][0], "endpoint_id": robot_id}]}
        with pytest.raises(DefinitionError) as caught:
            validate(session, wrong)
    assert caught.value.fields["nodes.crm.endpoint_id"] == "must name an existing webhook endpoint"
    journey_id = create_published(definition)
    contact = make_contact(email="hot@example.com")
    with session_scope() as session:
        service.enroll_contact(session, journey_id, contact)
    tick()
    assert [channel for channel, _ in deliveries(contact)] == ["webhook", "wecom"]
    assert enrollment_of(contact).status == "completed"


def test_enrolling_thousands_at_once_goes_in_batches(backend: Backend) -> None:
    clock.freeze(T0)
    contacts = [uuid.uuid4() for _ in range(2500)]
    with session_scope() as session:
        session.execute(
            insert(Contact),
            [
                {"id": c, "is_known": True, "traits": {}, "created_at": T0, "updated_at": T0}
                for c in contacts
            ],
        )
    journey_id = create_published(
        {"trigger": {"type": "manual"}, "start": "end", "nodes": [{"id": "end", "type": "exit"}]}
    )
    with session_scope() as session:
        journey = service.get_journey(session, journey_id)
        assert sorted(engine.enroll(session, journey, contacts)) == sorted(contacts)
        assert engine.enroll(session, journey, contacts) == []


def test_meeting_the_goal_while_waiting_converts_at_once(backend: Backend) -> None:
    clock.freeze(T0)
    definition = {
        "trigger": {"type": "manual"},
        "goal": {"event": "Demo Booked"},
        "start": "hold",
        "nodes": [
            {"id": "hold", "type": "wait", "duration": {"days": 30}, "next": "tag"},
            {"id": "tag", "type": "update_contact", "add_tags": ["too late"]},
        ],
    }
    journey_id = create_published(definition)
    booked, idle = make_contact(), make_contact()
    with session_scope() as session:
        service.enroll_contact(session, journey_id, booked)
        service.enroll_contact(session, journey_id, idle)
    tick()
    clock.advance(timedelta(days=1))
    event(booked, "Demo Booked")
    assert tick() == 1
    assert enrollment_of(booked).status == "converted"
    assert enrollment_of(idle).status == "waiting"
    assert enrollment_of(idle).next_run_at == T0 + timedelta(days=30)
