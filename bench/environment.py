"""The production-shaped setting a benchmark runs in: a fresh PostgreSQL database (migrated,
with one source), a Redis capture stream of its own, and the NURTURE_* environment for both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from capture.envelope import payload_event_count
from capture.queue import reset_queue
from capture.sources import create_source, write_keys
from core import db, settings
from core.migrate import upgrade

POSTGRES_ADMIN_URL = os.environ.get(
    "NURTURE_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("NURTURE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@dataclass(frozen=True)
class BenchEnvironment:
    database_url: str
    stream: str
    data_dir: Path
    write_key: str
    source_id: uuid.UUID

    def server_environment(self) -> dict[str, str]:
        return {**os.environ, **nurture_variables(self.database_url, self.stream, self.data_dir)}

    def queued_events(self) -> int:
        """Events in the capture stream (an entry can hold many requests' events)."""
        client = redis.Redis.from_url(REDIS_URL)
        total, start = 0, "-"
        while True:
            entries = client.xrange(self.stream, min=start, count=1000)
            total += sum(payload_event_count(fields[b"d"]) for _, fields in entries)
            if len(entries) < 1000:
                return total
            start = "(" + entries[-1][0].decode()

    def clear_queue(self) -> None:
        redis.Redis.from_url(REDIS_URL).delete(self.stream)


@contextmanager
def bench_environment() -> Iterator[BenchEnvironment]:
    """Creates everything, points this process's settings at it, and removes it all after."""
    name = f"nurture_bench_{uuid.uuid4().hex[:10]}"
    database_url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    stream = f"nurture:bench:{name}"
    data_dir = Path(tempfile.mkdtemp(prefix="nurture-bench-"))
    saved_environment = dict(os.environ)
    try:
        upgrade(database_url)
        os.environ.update(nurture_variables(database_url, stream, data_dir))
        _reset_caches()
        with db.session_scope() as session:
            source, write_key = create_source(session, "bench site", ["https://www.example.cn"])
            source_id = source.id
        yield BenchEnvironment(database_url, stream, data_dir, write_key, source_id)
    finally:
        redis.Redis.from_url(REDIS_URL).delete(stream)
        db.get_engine().dispose()
        os.environ.clear()
        os.environ.update(saved_environment)
        _reset_caches()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(data_dir, ignore_errors=True)


def nurture_variables(database_url: str, stream: str, data_dir: Path) -> dict[str, str]:
    return {
        "NURTURE_ENV": "test",
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_REDIS_URL": REDIS_URL,
        "NURTURE_CAPTURE_STREAM": stream,
        "NURTURE_DATA_DIR": str(data_dir),
    }


def _reset_caches() -> None:
    settings.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    reset_queue()
    write_keys.clear()
