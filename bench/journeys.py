"""Journeys benchmarks on PostgreSQL: evaluating a three-condition segment (one behavioural)
over 1,000,000 contacts with their events, and enrollment steps advanced per second by the
scheduler in one process, each step recorded under its idempotency key.
"""

from __future__ import annotations

import time

from sqlalchemy import func, select, text

from bench.environment import bench_environment
from bench.options import Options
from bench.results import at_least, at_most, record
from core.clock import clock
from core.db import session_scope
from journeys import engine, segments, service
from journeys.models import EnrollmentStep, SegmentMember
from scoring.simulation.run import default_end

SEGMENT_CONTACTS = 1_000_000
STEP_ENROLLMENTS = 20_000
SEGMENT = {
    "and": [
        {"field": "traits.title", "op": "in", "value": ["CTO", "IT经理"]},
        {"field": "page_views", "op": "gte", "value": 3},
        {
            "type": "page",
            "where": [{"field": "path", "op": "eq", "value": "/pricing"}],
            "within_days": 30,
        },
    ]
}
STEP_JOURNEY = {
    "trigger": {"type": "manual"},
    "start": "tag",
    "nodes": [
        {"id": "tag", "type": "update_contact", "add_tags": ["nurtured"], "next": "stage"},
        {"id": "stage", "type": "set_lifecycle_stage", "stage": "lead", "next": "split"},
        {
            "id": "split",
            "type": "split",
            "branches": [{"percent": 50, "next": "end"}, {"percent": 50, "next": "end"}],
        },
        {"id": "end", "type": "exit"},
    ],
}


def load_contacts(count: int) -> None:
    """`count` known contacts with job titles and two page views each, a pricing view for one
    in three and a form submission for one in five, each at its own time in the last 60 days."""
    now = clock.now()
    with session_scope() as session:
        session.execute(
            text(
                "INSERT INTO contacts (id, is_known, traits, tags, event_counts, page_views,"
                " email_consent, sms_consent, email_unsubscribed, sms_unsubscribed, suppressed,"
                " first_seen_at, last_seen_at, created_at, updated_at)"
                " SELECT gen_random_uuid(), true, jsonb_build_object('title',"
                " (ARRAY['CTO','工程师','IT经理','学生'])[1 + n % 4]), '[]', '{}', 3,"
                " 'unknown', 'unknown', false, false, false,"
                " :now - interval '60 days', :now, :now, :now"
                " FROM generate_series(1, :count) AS n"
            ),
            {"count": count, "now": now},
        )
        session.execute(
            text(
                "INSERT INTO events (source_id, message_id, contact_id, type, name, properties,"
                " context, timestamp, received_at, path)"
                " SELECT gen_random_uuid(), gen_random_uuid()::text, id,"
                " CASE WHEN k = 4 THEN 'track' ELSE 'page' END,"
                " CASE WHEN k = 4 THEN 'form_submitted' END, '{}', '{}', t, t,"
                " CASE WHEN k = 4 THEN NULL WHEN k = 3 THEN '/pricing' ELSE '/product' END"
                " FROM (SELECT c.id, k, :now - random() * interval '60 days' AS t"
                " FROM contacts c CROSS JOIN generate_series(1, 4) AS k) AS rows"
                " WHERE k <= 2 OR (k = 3 AND abs(hashtext(id::text)) % 100 < 34)"
                " OR (k = 4 AND abs(hashtext(id::text || 'form')) % 100 < 20)"
            ),
            {"now": now},
        )
        session.execute(text("ANALYZE contacts; ANALYZE events"))


def run(options: Options) -> None:
    with bench_environment():
        clock.freeze(default_end())
        try:
            started = time.perf_counter()
            load_contacts(SEGMENT_CONTACTS)
            print(
                f"  loaded {SEGMENT_CONTACTS:,} contacts in {time.perf_counter() - started:.0f} s"
            )
            segment_evaluation()
            steps_per_second()
        finally:
            clock.unfreeze()


def segment_evaluation() -> None:
    with session_scope() as session:
        started = time.perf_counter()
        count, _ = segments.preview(session, SEGMENT, 10)
        record(
            "journeys.segment_count_1m_contacts_seconds",
            time.perf_counter() - started,
            "s",
            target=at_most(2),
        )
    with session_scope() as session:
        started = time.perf_counter()
        segment = segments.create_segment(session, "bench", "dynamic", SEGMENT)
        elapsed = time.perf_counter() - started
        stored = session.scalar(
            select(func.count())
            .select_from(SegmentMember)
            .where(SegmentMember.segment_id == segment.id)
        )
    assert stored == count
    print(f"  {count:,} members")
    record("journeys.segment_build_1m_contacts_seconds", elapsed, "s")


def steps_per_second() -> None:
    with session_scope() as session:
        journey = service.create_journey(session, "bench", STEP_JOURNEY)
        service.publish(session, journey.id)
        contact_ids = list(
            session.scalars(text(f"SELECT id FROM contacts LIMIT {STEP_ENROLLMENTS}"))
        )
        engine.enroll(session, journey, contact_ids)
    started = time.perf_counter()
    while True:
        with session_scope() as session:
            if not engine.run_due(session, 500):
                break
    elapsed = time.perf_counter() - started
    with session_scope() as session:
        steps = session.scalar(select(func.count()).select_from(EnrollmentStep)) or 0
    record(
        "journeys.steps_per_second_one_process",
        steps / elapsed,
        "steps/s",
        target=at_least(2000),
    )
