"""The API process sends tasks to Nurture's broker, not to Celery's default AMQP app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import api.main
from celery import current_app
from channels.tasks import send_delivery
print(current_app.main, send_delivery.app.main, send_delivery.app.conf.broker_url)
"""


def probe(tmp_path: Path, redis_url: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env["NURTURE_DATA_DIR"] = str(tmp_path)
    env["NURTURE_DATABASE_URL"] = f"sqlite:///{tmp_path}/probe.sqlite3"
    if redis_url:
        env["NURTURE_REDIS_URL"] = redis_url
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_the_server_app_binds_tasks_to_the_redis_broker(tmp_path: Path) -> None:
    assert probe(tmp_path, "redis://127.0.0.1:6379/14") == [
        "nurture",
        "nurture",
        "redis://127.0.0.1:6379/14",
    ]


def test_the_server_app_binds_tasks_to_the_embedded_broker(tmp_path: Path) -> None:
    assert probe(tmp_path, None) == ["nurture", "nurture", "filesystem://"]


DISPATCH_PROBE = """
import json, redis, uuid
import api.main
from core import feed
from core.db import session_scope
from core.migrate import upgrade
from core.settings import get_settings
upgrade(get_settings().resolved_database_url)
client = redis.Redis.from_url("{redis_url}")
client.flushdb()
with session_scope() as session:
    feed.publish(session, [feed.Change("trait_changed", uuid.uuid4(), {{}})])
queued = [json.loads(m)["headers"]["task"] for m in client.lrange("default", 0, -1)]
print(*queued)
"""


def test_a_request_that_publishes_changes_asks_for_a_dispatch_on_commit(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:6379/14"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATA_DIR=str(tmp_path),
        NURTURE_DATABASE_URL=f"sqlite:///{tmp_path}/probe.sqlite3",
        NURTURE_REDIS_URL=url,
    )
    out = subprocess.run(
        [sys.executable, "-c", DISPATCH_PROBE.format(redis_url=url)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["core.dispatch_feed"]
