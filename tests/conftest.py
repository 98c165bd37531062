"""Test fixtures: a fresh PostgreSQL database and Redis stream per run, an embedded (SQLite)
backend beside it, each test starting from empty tables.

With CI=true a service that is down fails the test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from capture.queue import reset_queue
from capture.sources import create_source, write_keys
from channels.settings import get_channel_settings
from core import db, feed, settings
from core.clock import clock
from core.compiled import is_compiled
from core.keys import Role, create_api_key
from core.migrate import upgrade
from core.registry import metadata

POSTGRES_ADMIN_URL = os.environ.get("NURTURE_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NURTURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_report_header() -> str:
    compiled = "compiled by mypyc" if is_compiled() else "plain Python (no C compiler, or stale)"
    return f"ingest hot paths: {compiled}"


def service_missing(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing service is a failure)")
    pytest.skip(message)


@dataclass
class Backend:
    name: str
    database_url: str
    redis_url: str | None
    data_dir: Path

    def activate(self) -> None:
        os.environ["NURTURE_ENV"] = "test"
        os.environ["NURTURE_DATABASE_URL"] = self.database_url
        os.environ["NURTURE_DATA_DIR"] = str(self.data_dir)
        if self.redis_url:
            os.environ["NURTURE_REDIS_URL"] = self.redis_url
        else:
            os.environ.pop("NURTURE_REDIS_URL", None)
        os.environ["NURTURE_CAPTURE_STREAM"] = f"nurture:test:{self.data_dir.name}"
        reset_caches()


def reset_caches() -> None:
    settings.get_settings.cache_clear()
    get_channel_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    reset_queue()
    write_keys.clear()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"nurture_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", exc)
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    db.get_engine.cache_clear()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    return REDIS_URL


@pytest.fixture(scope="session")
def sqlite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("embedded")
    upgrade(f"sqlite:///{path / 'nurture.sqlite3'}")
    return path


def truncate_all(backend: Backend) -> None:
    engine = db.get_engine()
    tables = [t.name for t in metadata.sorted_tables]
    with engine.begin() as conn:
        if backend.name == "postgres":
            conn.execute(text("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE"))
        else:
            for name in reversed(tables):
                conn.execute(text(f"DELETE FROM {name}"))
    if backend.redis_url:
        client = redis.Redis.from_url(backend.redis_url)
        client.delete(os.environ["NURTURE_CAPTURE_STREAM"])
    else:
        queue_file = backend.data_dir / "capture-queue.sqlite3"
        if queue_file.exists():
            import sqlite3

            with sqlite3.connect(queue_file) as conn:
                conn.execute("DELETE FROM capture_queue")


def _make_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    if name == "postgres":
        pg = request.getfixturevalue("postgres_url")
        rd = request.getfixturevalue("redis_url")
        data_dir = request.getfixturevalue("tmp_path_factory").mktemp("pgdata")
        return Backend("postgres", pg, rd, data_dir)
    path = request.getfixturevalue("sqlite_dir")
    return Backend("sqlite", f"sqlite:///{path / 'nurture.sqlite3'}", None, path)


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Runs the test once on PostgreSQL + Redis and once on the embedded defaults."""
    chosen = _make_backend(request.param, request)
    chosen.activate()
    truncate_all(chosen)
    clock.unfreeze()
    # A test dispatches the feed when it chooses, even after an earlier test started a server
    # in this process (which asks for a dispatch at every commit).
    feed.on_commit_dispatch(None)
    yield chosen
    clock.unfreeze()
    db.get_engine().dispose()


@pytest.fixture
def pg_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """PostgreSQL + Redis only, for tests of production-only behaviour."""
    chosen = _make_backend("postgres", request)
    chosen.activate()
    truncate_all(chosen)
    clock.unfreeze()
    # A test dispatches the feed when it chooses, even after an earlier test started a server
    # in this process (which asks for a dispatch at every commit).
    feed.on_commit_dispatch(None)
    yield chosen
    clock.unfreeze()
    db.get_engine().dispose()


@pytest.fixture
def client(backend: Backend) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def admin_key(backend: Backend) -> str:
    with db.session_scope() as session:
        _, plain = create_api_key(session, "test admin", Role.admin)
    return plain


def make_key(role: Role) -> str:
    with db.session_scope() as session:
        _, plain = create_api_key(session, f"test {role}", role)
    return plain


@pytest.fixture
def write_key(backend: Backend) -> str:
    with db.session_scope() as session:
        _, key = create_source(session, "test site", ["https://www.example.com"])
    return key


def drain() -> int:
    """Runs the ingest worker until the capture queue is empty; returns events processed."""
    from capture.ingest import drain_queue

    return drain_queue()
