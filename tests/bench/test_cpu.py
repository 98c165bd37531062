"""The benchmarks' CPU readings: a process's own time, and PostgreSQL's."""

from __future__ import annotations

import os
import time

import psycopg

from bench.cpu import cpu_seconds_of, postgres_cpu_seconds


def burn(seconds: float) -> None:
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


def test_cpu_seconds_of_a_process_grow_by_the_cpu_it_spends() -> None:
    before = cpu_seconds_of(os.getpid())
    burn(0.3)
    after = cpu_seconds_of(os.getpid())
    assert before is not None and after is not None
    assert 0.25 <= after - before <= 0.5


def test_cpu_seconds_of_a_process_that_is_gone_is_unknown() -> None:
    assert cpu_seconds_of(2**22 + 1) is None  # above the kernel's largest pid


def test_postgres_cpu_counts_the_work_of_its_backends(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        before = postgres_cpu_seconds()
        # Some tenths of a second of work in the backend: md5 over two million numbers.
        connection.execute("SELECT count(DISTINCT md5(i::text)) FROM generate_series(1, 2000000) i")
        after = postgres_cpu_seconds()  # read while the backend lives: its time goes with it
    assert before is not None and after is not None
    assert after - before >= 0.1
