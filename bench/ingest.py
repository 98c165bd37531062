"""Ingest benchmark: realistic events queued in Redis, drained into PostgreSQL by one worker
process (identity resolution, sessions and profile updates included), timed end to end.
"""

from __future__ import annotations

import time

from bench import events
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
        started = time.perf_counter()
        stored = drain_queue()
        seconds = time.perf_counter() - started
        left = environment.queued_events()
        if left or not stored:
            raise RuntimeError(f"drain_queue() stored {stored} events and left {left} entries")
        print(
            f"  processed {len(entries):,} events in {seconds:.1f} s "
            f"({stored:,} stored; bots and duplicates are not)"
        )
    record(FIGURE, len(entries) / seconds, "events/s", target=at_least(10_000))
