"""Handoff benchmark on PostgreSQL and Redis: the time from the event that makes a contact an
MQL being queued by capture to the assigned rep's WeCom notification arriving at a local fake
robot, through ingest, the change feed (dispatched every second, as beat does), scoring,
routing and the channels send; 100 contacts become MQLs at 10 a second, spread over 20 reps
with a robot each. Celery tasks run in-process (eager) instead of in a worker.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from sqlalchemy import select

from bench.environment import bench_environment
from bench.options import Options
from bench.results import at_most, record
from capture.ingest import drain_queue
from capture.models import Contact
from capture.queue import get_queue
from capture.tracking import envelope_for_single
from channels.models import Robot
from core import feed
from core.clock import clock
from core.db import session_scope
from handoff import service
from handoff.models import Lead
from handoff.schemas import RepCreate, RuleCreate
from worker.app import celery_app

REPS = 20
CONTACTS = 100
WAVE = 10
DISPATCH_EVERY_SECONDS = 1.0
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
def pipeline_running() -> Iterator[None]:
    """Ingest draining continuously and the change feed dispatched every second."""
    stop = threading.Event()

    def ingest() -> None:
        while not stop.is_set():
            if drain_queue() == 0:
                time.sleep(0.02)

    def dispatch() -> None:
        while not stop.wait(DISPATCH_EVERY_SECONDS):
            with session_scope() as session:
                feed.dispatch(session)

    threads = [threading.Thread(target=ingest), threading.Thread(target=dispatch)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


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


def mql_to_notification(options: Options) -> None:
    robots = FakeWeCom()
    celery_app.conf.task_always_eager = True
    try:
        with bench_environment() as env, pipeline_running():
            import handoff.tasks  # noqa: F401  (subscribes routing to the change feed)
            import scoring.tasks  # noqa: F401  (subscribes scoring to the change feed)

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
            wait_for(lambda: known_contacts(users) == CONTACTS, 60)
            time.sleep(3 * DISPATCH_EVERY_SECONDS)  # scored, and found short of MQL
            assert not leads_of(users), "contacts became MQLs before the measured event"
            queued_at: dict[str, float] = {}
            for start in range(0, CONTACTS, WAVE):
                for user in users[start : start + WAVE]:
                    queued_at[user] = time.time()
                    queue_events([("track", user, {"event": "form_submitted"})], env.source_id)
                    time.sleep(DISPATCH_EVERY_SECONDS / WAVE)
            wait_for(lambda: len(robots.arrived) >= CONTACTS, 60)
            leads = leads_of(users)
            latencies = sorted(robots.arrived[leads[u]] - queued_at[u] for u in users)
    finally:
        celery_app.conf.task_always_eager = False
        robots.stop()
    p99 = latencies[max(0, round(0.99 * len(latencies)) - 1)]
    record("handoff.mql_to_notification_p50_seconds", statistics.median(latencies), "s")
    record("handoff.mql_to_notification_p99_seconds", p99, "s", target=at_most(5))


def run(options: Options) -> None:
    mql_to_notification(options)


if __name__ == "__main__":
    run(Options())
