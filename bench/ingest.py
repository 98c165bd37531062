"""Ingest benchmark: realistic events queued in Redis, drained into PostgreSQL by one worker
process (identity resolution, sessions and profile updates included), timed end to end.
"""

from __future__ import annotations

import time

from bench import events
from bench.cpu import postgres_cpu_seconds
from bench.environment import bench_environment
from bench.options import Options
from bench.results import at_least, not_run, record
from capture.queue import get_queue

FIGURE = "ingest.events_per_second"
VISITORS = 20_000


def run(options: Options) -> None:
    try:
        from capture.ingest import drain_queue
    except ModuleNotFoundError as error:
        if error.name != "capture.ingest":
            raise
        not_run(FIGURE, "capture.ingest is not written yet")
        return
    # One run, not a median of several: draining 100,000 events takes long enough to smooth
    # out the other users of the machine, and repeating it would multiply the run time.
    with bench_environment() as environment:
        entries = events.queue_entries(options.events, VISITORS, str(environment.source_id))
        queue = get_queue()
        for entry in entries:
            queue.put_sync(entry)
        print(f"  queued {len(entries):,} events from {VISITORS:,} visitors")
        worker_before, postgres_before = time.process_time(), postgres_cpu_seconds()
        started = time.perf_counter()
        stored = drain_queue()
        seconds = time.perf_counter() - started
        worker = time.process_time() - worker_before
        postgres_after = postgres_cpu_seconds()
        left = environment.queued_events()
        if left or not stored:
            raise RuntimeError(f"drain_queue() stored {stored} events and left {left} entries")
        print(
            f"  processed {len(entries):,} events in {seconds:.1f} s "
            f"({stored:,} stored; bots and duplicates are not)"
        )
        postgres = None
        if postgres_before is not None and postgres_after is not None:
            postgres = postgres_after - postgres_before
        print(cpu_per_event(len(entries), seconds, worker, postgres))
    record(FIGURE, len(entries) / seconds, "events/s", target=at_least(10_000))


def cpu_per_event(count: int, seconds: float, worker: float, postgres: float | None) -> str:
    """The worker holds the GIL for most of its work: its CPU per event is what the code
    costs, and cores in use near 1 mean the rate is bound by that cost. PostgreSQL's share
    is every PostgreSQL process's on this machine."""
    line = (
        f"  CPU per event: worker {worker / count * 1e6:.0f} µs "
        f"({worker / seconds:.2f} cores in use)"
    )
    if postgres is not None:
        line += f", PostgreSQL {postgres / count * 1e6:.0f} µs ({postgres / seconds:.2f} cores)"
    return line
