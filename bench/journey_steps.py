"""Enrollment steps advanced per second on PostgreSQL by one and by two scheduler processes
(real OS processes, each claiming batches with FOR UPDATE SKIP LOCKED and advancing them
set-based), every step recorded under its idempotency key.

`python -m bench.journey_steps` runs it alone on a small contact table; `python -m bench
journeys` runs it after the segment benchmark.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from datetime import datetime
from multiprocessing.synchronize import Event as StartSignal
from typing import Any

from sqlalchemy import func, select, text

from bench.cpu import cpu_seconds_of
from bench.results import at_least, record
from core.clock import clock
from core.db import session_scope
from journeys import engine, service
from journeys.models import Enrollment, EnrollmentStep

ENROLLMENTS = 4_000
ROUNDS = 3
BATCH = 500
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


def steps_per_second(enrollments: int = ENROLLMENTS, rounds: int = ROUNDS) -> None:
    """Median steps/s of `rounds` runs with one process and with two, each run on
    `enrollments` fresh enrollments (four steps each) of contacts already in the database."""
    for processes, name in ((1, "one_process"), (2, "two_processes")):
        runs = [_one_run(enrollments, processes) for _ in range(rounds)]
        rates = [rate for rate, _ in runs]
        print(
            f"  {processes} process(es): {', '.join(f'{r:,.0f}' for r in rates)} steps/s;"
            f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        record(
            f"journeys.steps_per_cpu_second_{name}",
            statistics.median(per_cpu for _, per_cpu in runs),
            "steps/CPU s",
        )
        record(
            f"journeys.steps_per_second_{name}",
            statistics.median(rates),
            "steps/s",
            target=at_least(2000) if processes == 2 else None,
        )


def _one_run(enrollments: int, processes: int) -> tuple[float, float]:
    """Steps per second of wall time, and per CPU second spent by the schedulers and their
    database backends (what the figure would be on an otherwise idle machine, per core)."""
    with session_scope() as session:
        journey = service.create_journey(session, "bench steps", STEP_JOURNEY)
        service.publish(session, journey.id)
        contact_ids = list(
            session.scalars(
                text("SELECT id FROM contacts ORDER BY random() LIMIT :n"), {"n": enrollments}
            )
        )
        engine.enroll(session, journey, contact_ids)
        journey_id = journey.id
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    cpu = context.Queue()
    workers = [
        context.Process(target=_advance_until_done, args=(clock.now(), start, cpu))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(2)  # let the processes import and connect before the clock starts
    started = time.perf_counter()
    start.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    cpu_seconds = [cpu.get() for _ in workers]
    client = sum(c for c, _ in cpu_seconds)
    server = sum(s for _, s in cpu_seconds)
    with session_scope() as session:
        steps = session.scalar(
            select(func.count())
            .select_from(EnrollmentStep)
            .where(EnrollmentStep.journey_id == journey_id)
        )
        unfinished = session.scalar(
            select(func.count())
            .select_from(Enrollment)
            .where(Enrollment.journey_id == journey_id, Enrollment.status != "exited")
        )
    assert steps == enrollments * 4 and unfinished == 0, (steps, unfinished)
    print(
        f"    {steps:,} steps in {elapsed:.2f} s by {processes} process(es); CPU"
        f" {client:.2f} s in the scheduler process(es), {server:.2f} s in their PostgreSQL"
        f" backends: {steps / (client + server):,.0f} steps per CPU second"
    )
    return steps / elapsed, steps / (client + server)


def _advance_until_done(now: datetime, start: StartSignal, cpu: Any) -> None:
    """One scheduler process: claims and advances batches until nothing is left to claim."""
    clock.freeze(now)
    with session_scope() as session:
        backend = session.scalar(text("SELECT pg_backend_pid()"))
    start.wait()
    began, server_began = time.process_time(), _cpu_seconds_of(backend)
    while True:
        with session_scope() as session:
            if not engine.run_due(session, BATCH):
                break
    with session_scope() as session:
        assert session.scalar(text("SELECT pg_backend_pid()")) == backend  # one connection
    cpu.put((time.process_time() - began, _cpu_seconds_of(backend) - server_began))


def _cpu_seconds_of(pid: int) -> float:
    """CPU time of a local process (the PostgreSQL backend serving a connection)."""
    seconds = cpu_seconds_of(pid)
    if seconds is None:
        raise RuntimeError(f"/proc does not tell the CPU time of process {pid}")
    return seconds


def main() -> None:
    from bench.environment import bench_environment
    from bench.population import load_population
    from scoring.simulation.run import default_end

    with bench_environment():
        clock.freeze(default_end())
        try:
            load_population(ENROLLMENTS * 2, clock.now())
            steps_per_second()
        finally:
            clock.unfreeze()


if __name__ == "__main__":
    main()
