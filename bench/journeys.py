"""Journeys benchmarks on PostgreSQL: evaluating a three-condition segment (one behavioural)
over 1,000,000 contacts with their events, enrollment steps advanced per second by the
scheduler in one and in two processes (bench/journey_steps.py), each step recorded under its
idempotency key, and the cost per ingested event of matching it against 200 published
journeys' entry triggers beside the same batch with no journeys.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select

from bench import events, journey_steps
from bench.environment import BenchEnvironment, bench_environment
from bench.options import Options
from bench.population import load_population
from bench.results import at_most, record
from capture.ingest import drain_queue
from capture.queue import get_queue
from core import feed
from core.clock import clock
from core.db import session_scope
from journeys import segments, service
from journeys.models import Enrollment, SegmentMember
from scoring.simulation.run import default_end

SEGMENT_CONTACTS = 1_000_000
SEGMENT_RUNS = 5
TRIGGER_JOURNEYS = 200
TRIGGER_EVENTS = 5_000
TRIGGER_VISITORS = 1_000
TRIGGER_RUNS = 3
SEGMENT = {
    "and": [
        {"field": "traits.job_title", "op": "in", "value": ["CTO", "IT经理"]},
        {"field": "page_views", "op": "gte", "value": 3},
        {
            "type": "page",
            "where": [{"field": "path", "op": "eq", "value": "/pricing"}],
            "within_days": 30,
        },
    ]
}


def run(options: Options) -> None:
    with bench_environment() as environment:
        clock.freeze(default_end())
        try:
            started = time.perf_counter()
            stored = load_population(SEGMENT_CONTACTS, clock.now())
            print(
                f"  loaded {SEGMENT_CONTACTS:,} contacts and {stored:,} events"
                f" in {time.perf_counter() - started:.0f} s"
            )
            segment_evaluation()
            steps_per_second()
            trigger_matching(environment)
        finally:
            clock.unfreeze()


def median_seconds(runs: int, work: Callable[[], Any]) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    print(f"  runs: {', '.join(f'{t:.3f}' for t in timings)} s")
    return statistics.median(timings)


def segment_evaluation() -> None:
    counts: list[int] = []

    def count_members() -> None:
        with session_scope() as session:
            counts.append(segments.preview(session, SEGMENT, 10)[0])

    record(
        "journeys.segment_count_1m_contacts_seconds",
        median_seconds(SEGMENT_RUNS, count_members),
        "s",
        target=at_most(2),
    )
    count = counts[0]
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
    journey_steps.steps_per_second()


def trigger_journeys() -> list[dict[str, Any]]:
    """200 entry triggers as a large tenant has them: events with property filters naming
    their own forms, campaigns, plans and thresholds (a few match any one event of the
    batch), page visits by title and by path, trait changes with conditions, and segment
    entries."""
    pages = [title for _, title in events.PAGES]
    paths = [path for path, _ in events.PAGES if path != "/"]
    channels = ["paid_search", "social", "email", "organic_search", "referral"]
    titles = events.JOB_TITLES
    event_triggers: list[Callable[[int], dict[str, Any]]] = [
        lambda n: {
            "event": "Form Submitted",
            "where": [_test("properties.form_id", "eq", f"f{n}")],
        },
        lambda n: {
            "event": "Email Clicked",
            "where": [_test("properties.campaign", "eq", f"c{n}")],
        },
        lambda n: {
            "event": "Viewed Pricing",
            "where": [_test("properties.plan", "eq", ["team", "pro", "ent", "starter"][n % 4])],
        },
        lambda n: {
            "event": "Watched Video",
            "where": [_test("properties.seconds", "gte", 30 * (n % 10 + 1))],
        },
        lambda n: {
            "event": "Requested Demo",
            "where": [_test("properties.team_size", "in", [["1-10", "10-50", "50-200"][n % 3]])],
        },
        lambda n: {"event": "Started Trial", "where": [_test("properties.seats", "gte", 5 * n)]},
        lambda n: {
            "event": pages[n % len(pages)],
            "where": [_test("channel", "eq", channels[n % len(channels)])],
        },
        # Page views by path and channel: the snippet's page calls carry no event name.
        lambda n: {
            "call": "page",
            "where": [
                _test("path", "starts_with", paths[n // 8 % len(paths)]),
                _test("channel", "eq", channels[n % len(channels)]),
            ],
        },
    ]
    trait_triggers: list[Callable[[int], dict[str, Any]]] = [
        lambda n: {"trait": "title", "condition": _test("traits.title", "eq", titles[n % 5])},
        lambda n: {"trait": "plan", "condition": _test("traits.plan", "eq", "pro")},
        lambda n: {"trait": "industry", "condition": _test("traits.industry", "eq", "金融")},
    ]
    triggers: list[dict[str, Any]] = []
    for n in range(TRIGGER_JOURNEYS):
        if n % 20 < 14:
            triggers.append({"type": "event", **event_triggers[n % len(event_triggers)](n)})
        elif n % 20 < 17:
            triggers.append({"type": "trait_change", **trait_triggers[n % len(trait_triggers)](n)})
        else:
            triggers.append({"type": "segment_entry"})
    return [
        {"trigger": trigger, "start": "end", "nodes": [{"id": "end", "type": "exit"}]}
        for trigger in triggers
    ]


def _test(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


def trigger_matching(environment: BenchEnvironment) -> None:
    """Ingests one batch of site traffic, then hands its change feed to the journeys
    consumer with no journeys and with 200 published, a few times each (enrollments a run
    made are removed before the next, so every run does the same work)."""
    first_change = _last_change_id()
    queue = get_queue()
    for entry in events.queue_entries(
        TRIGGER_EVENTS, TRIGGER_VISITORS, str(environment.source_id), seed=3
    ):
        queue.put_sync(entry)
    started = time.perf_counter()
    ingested = drain_queue()
    ingest_seconds = time.perf_counter() - started
    print(f"  ingested {ingested:,} events in {ingest_seconds:.2f} s")

    journey_ids: list[Any] = []

    def match() -> None:
        last = first_change
        while True:
            with session_scope() as session:
                records = feed.read_since(session, last, 1000)
                if not records:
                    break
                service.handle_changes(session, records)
                last = records[-1].id
        with session_scope() as session:
            session.execute(delete(Enrollment).where(Enrollment.journey_id.in_(journey_ids)))

    alone = median_seconds(TRIGGER_RUNS, match)
    with session_scope() as session:
        for n, definition in enumerate(trigger_journeys()):
            if definition["trigger"]["type"] == "segment_entry":
                segment = segments.create_segment(session, f"list {n}", "static", None)
                definition["trigger"]["segment_id"] = str(segment.id)
            journey = service.create_journey(session, f"journey {n}", definition)
            service.publish(session, journey.id)
            journey_ids.append(journey.id)
    with_journeys = median_seconds(TRIGGER_RUNS, match)
    baseline = record(
        "journeys.trigger_matching_no_journeys_us_per_event", alone / ingested * 1e6, "us"
    )
    record(
        "journeys.trigger_matching_200_journeys_us_per_event",
        with_journeys / ingested * 1e6,
        "us",
        baseline=baseline,
    )
    pipeline = record(
        "journeys.ingest_and_match_no_journeys_us_per_event",
        (ingest_seconds + alone) / ingested * 1e6,
        "us",
    )
    record(
        "journeys.ingest_and_match_200_journeys_us_per_event",
        (ingest_seconds + with_journeys) / ingested * 1e6,
        "us",
        baseline=pipeline,
    )


def _last_change_id() -> int:
    with session_scope() as session:
        return session.scalar(select(func.max(feed.ChangeRecord.id))) or 0
