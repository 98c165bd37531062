"""Handoff benchmark on PostgreSQL and Redis, with the production processes running: the time
from the event that makes a contact an MQL being queued by capture to the assigned rep's WeCom
notification arriving at a local fake robot. A `nurture worker` (Celery on Redis with 4
processes, and the ingest loop) and a `nurture scheduler` (beat) run as child processes; the
change feed is dispatched when a commit publishes to it (beat's one-second dispatch is the
safety net).
100 contacts become MQLs at 10 a second, spread over 20 reps with a robot each.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import redis
from sqlalchemy import exists, func, select

from bench.environment import BenchEnvironment, bench_environment
from bench.options import Options
from bench.results import at_most, record
from capture.models import Contact
from capture.queue import get_queue, reset_queue
from capture.tracking import envelope_for_single
from channels.models import Robot
from core import feed, settings
from core.clock import clock
from core.db import session_scope
from handoff import service
from handoff.models import Lead
from handoff.schemas import RepCreate, RuleCreate

REPS = 20
CONTACTS = 100
WAVE = 10
WAVE_SECONDS = 1.0
WORKER_PROCESSES = 4
# The worker's broker and the capture stream, on a Redis database no other bench or test uses.
WORKER_REDIS = os.environ.get("NURTURE_BENCH_HANDOFF_REDIS_URL", "redis://127.0.0.1:6379/11")
LEAD_IN_LINK = re.compile(r"/handoff/leads/([0-9a-f-]{36})/dossier")
FIT_TRAITS = {"job_title": "CTO", "industry": "制造业", "company_size": 300}


class FakeWeCom:
    """Answers WeCom robot posts like the real endpoint and notes when each lead's arrived."""

    def __init__(self) -> None:
        self.arrived: dict[uuid.UUID, float] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                at = time.time()
                for lead_id in LEAD_IN_LINK.findall(body["markdown"]["content"]):
                    outer.arrived.setdefault(uuid.UUID(lead_id), at)
                answer = orjson.dumps({"errcode": 0, "errmsg": "ok"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/cgi-bin/webhook/send?key={key}"

    def stop(self) -> None:
        self.server.shutdown()


@contextmanager
def pipeline_running(env: BenchEnvironment) -> Iterator[None]:
    """`nurture worker` and `nurture scheduler` on this benchmark's database and Redis."""
    os.environ["NURTURE_REDIS_URL"] = WORKER_REDIS
    settings.get_settings.cache_clear()
    reset_queue()
    broker = redis.Redis.from_url(WORKER_REDIS)
    broker.flushdb()
    environment = {**env.server_environment(), "NURTURE_REDIS_URL": WORKER_REDIS}
    command = [sys.executable, "-m", "core.cli"]
    log_path = Path(tempfile.mkstemp(prefix="nurture-bench-handoff-", suffix=".log")[1])
    with log_path.open("wb") as log:
        children = [
            subprocess.Popen(
                [*command, *arguments, "--loglevel", "warning"],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for arguments in (["worker", "--concurrency", str(WORKER_PROCESSES)], ["scheduler"])
        ]
        try:
            yield
        finally:
            for child in children:
                os.killpg(child.pid, signal.SIGTERM)
            for child in children:
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
            broker.flushdb()
    errors = [line for line in log_path.read_text(errors="replace").splitlines() if "ERROR" in line]
    if errors:
        print(f"   {len(errors)} errors in the worker's log {log_path}, e.g. {errors[0]}")
    else:
        log_path.unlink()


def queue_events(events: list[tuple[str, str, dict[str, Any]]], source_id: uuid.UUID) -> None:
    """Queues (kind, user id, body) messages exactly as the tracking API does once valid."""
    now = clock.now()
    meta = {"sourceId": str(source_id), "ip": None, "userAgent": None, "sentAt": None}
    envelopes = [
        envelope_for_single(
            {"userId": user, "messageId": str(uuid.uuid4()), **body},
            kind,
            now,
            meta,
            timedelta(minutes=5),
        )
        for kind, user, body in events
    ]
    get_queue().put_sync(orjson.dumps(envelopes))


def set_up_reps(robots: FakeWeCom) -> None:
    with session_scope() as session:
        service.create_rule(session, RuleCreate(name="everyone", position=10, kind="pool"))
        for n in range(REPS):
            robot = Robot(name=f"rep {n}", kind="wecom", webhook_url=robots.url(f"rep-{n}"))
            session.add(robot)
            session.flush()
            body = RepCreate(
                name=f"Rep {n}",
                capacity=1000,
                robot_id=robot.id,
                work_days=[1, 2, 3, 4, 5, 6, 7],
                work_start="00:00",
                work_end="23:59",
            )
            service.create_rep(session, body)


def wait_for(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the pipeline did not finish in time")
        time.sleep(0.05)


def known_contacts(users: list[str]) -> int:
    with session_scope() as session:
        query = select(Contact.id).where(Contact.user_id.in_(users))
        return len(session.scalars(query).all())


def leads_of(users: list[str]) -> dict[str, uuid.UUID]:
    with session_scope() as session:
        rows = session.execute(
            select(Contact.user_id, Lead.id)
            .join(Lead, Lead.contact_id == Contact.id)
            .where(Contact.user_id.in_(users))
        ).all()
    return {str(user): lead_id for user, lead_id in rows}


def feed_caught_up() -> bool:
    """Every consumer has been handed every change (and there are consumers)."""
    with session_scope() as session:
        cursors = session.scalar(select(func.count()).select_from(feed.FeedCursor)) or 0
        behind = session.scalar(
            select(
                exists().where(
                    feed.ChangeRecord.position.is_(None)
                    | (feed.ChangeRecord.position > feed.FeedCursor.last_id)
                )
            )
        )
    return cursors > 0 and not behind


def mql_to_notification(options: Options) -> None:
    robots = FakeWeCom()
    try:
        with bench_environment() as env, pipeline_running(env):
            set_up_reps(robots)
            users = [f"bench-{n}" for n in range(CONTACTS)]
            queue_events(
                [
                    ("identify", u, {"traits": {"email": f"{u}@factory.cn", **FIT_TRAITS}})
                    for u in users
                ]
                + [("track", u, {"event": "whitepaper_downloaded"}) for u in users],
                env.source_id,
            )
            wait_for(lambda: known_contacts(users) == CONTACTS, 120)
            wait_for(feed_caught_up, 120)  # scored, and found short of MQL
            assert not leads_of(users), "contacts became MQLs before the measured event"
            queued_at: dict[str, float] = {}
            for start in range(0, CONTACTS, WAVE):
                for user in users[start : start + WAVE]:
                    queued_at[user] = time.time()
                    queue_events([("track", user, {"event": "form_submitted"})], env.source_id)
                    time.sleep(WAVE_SECONDS / WAVE)
            wait_for(lambda: len(robots.arrived) >= CONTACTS, 120)
            leads = leads_of(users)
            latencies = sorted(robots.arrived[leads[u]] - queued_at[u] for u in users)
    finally:
        robots.stop()
    p99 = latencies[max(0, round(0.99 * len(latencies)) - 1)]
    record("handoff.mql_to_notification_p50_seconds", statistics.median(latencies), "s")
    record("handoff.mql_to_notification_p99_seconds", p99, "s", target=at_most(5))


def run(options: Options) -> None:
    mql_to_notification(options)


if __name__ == "__main__":
    run(Options())
