"""Channels benchmark: emails delivered to a local aiosmtpd server (its own process) by 2 worker
processes with one pooled SMTP connection each, beside the same run with a new connection for
every message. Measured twice: through the whole send path (lock, policies, render, tracked
links, SMTP, record, one PostgreSQL transaction per email, as a Celery task does it) and
through the SMTP provider alone with messages composed beforehand.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from typing import Any

from sqlalchemy import insert, text

from bench.environment import bench_environment
from bench.options import Options
from bench.results import at_least, record

WORKERS = 2
ROUNDS = 3
POOLED = "channels.send_path_emails_per_second_pooled"
UNPOOLED = "channels.send_path_emails_per_second_new_connection_each"
SMTP_POOLED = "channels.smtp_emails_per_second_pooled"
SMTP_UNPOOLED = "channels.smtp_emails_per_second_new_connection_each"
SMTP_ONLY_EMAILS = 6000
TEMPLATE_HTML = (
    "<html><body><h1>Hi {{ contact.first_name | default('there') }}</h1>"
    "<p>{{ contact.company }} could ship faster. "
    '<a href="https://acme.example/pricing">See pricing</a> or '
    '<a href="https://acme.example/case-studies/chongqing">read the case study</a>.</p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
)


def run(options: Options) -> None:
    with bench_environment():
        count = max(200, int(options.seconds * 200))
        server, port, delivered = start_smtp_server()
        try:
            os.environ.update(
                {
                    "NURTURE_SMTP_HOST": "127.0.0.1",
                    "NURTURE_SMTP_PORT": str(port),
                    "NURTURE_SMTP_FROM": "Acme <news@acme.example>",
                    "NURTURE_PUBLIC_URL": "https://nurture.example.com",
                    "NURTURE_EMAIL_DAILY_CAP": "1000",
                    "NURTURE_EMAIL_WEEKLY_CAP": "1000",
                }
            )
            template_id = create_template()
            batches = [
                (create_deliveries(template_id, count, f"unpooled{n}"), 1) for n in range(ROUNDS)
            ] + [(create_deliveries(template_id, count, f"pooled{n}"), 500) for n in range(ROUNDS)]
            analyze_tables()
            seen = delivered.value
            unpooled, pooled = [], []
            # The two modes take turns, so a busy moment of the machine does not land on one.
            for n in range(ROUNDS):
                for ids, per_connection in (batches[n], batches[ROUNDS + n]):
                    seconds = run_workers(deliver_share, as_tasks(ids), per_connection)
                    (unpooled if per_connection == 1 else pooled).append(count / seconds)
                    seen = check_received(delivered, seen, count)
            sample = list(range(SMTP_ONLY_EMAILS))
            smtp_unpooled = run_workers(send_composed_share, sample, messages_per_connection=1)
            seen = check_received(delivered, seen, SMTP_ONLY_EMAILS)
            smtp_pooled = run_workers(send_composed_share, sample, messages_per_connection=500)
            check_received(delivered, seen, SMTP_ONLY_EMAILS)
        finally:
            server.terminate()
            server.join()
    print(f"  whole send path, {count:,} emails per run, {WORKERS} worker processes, median of:")
    print(f"    new connection per message {rates(unpooled)} emails/s")
    print(f"    pooled connection          {rates(pooled)} emails/s")
    print(f"  SMTP provider alone, {SMTP_ONLY_EMAILS:,} emails per mode:")
    print(f"    new connection per message {SMTP_ONLY_EMAILS / smtp_unpooled:,.0f} emails/s")
    print(f"    pooled connection          {SMTP_ONLY_EMAILS / smtp_pooled:,.0f} emails/s")
    baseline = record(UNPOOLED, statistics.median(unpooled), "emails/s")
    record(POOLED, statistics.median(pooled), "emails/s", baseline=baseline, target=at_least(500))
    smtp_baseline = record(SMTP_UNPOOLED, SMTP_ONLY_EMAILS / smtp_unpooled, "emails/s")
    record(
        SMTP_POOLED,
        SMTP_ONLY_EMAILS / smtp_pooled,
        "emails/s",
        baseline=smtp_baseline,
        target=at_least(500),
    )


def rates(per_second: list[float]) -> str:
    return ", ".join(f"{rate:,.0f}" for rate in per_second)


def smtp_server(port: int, ready: Any, delivered: Any) -> None:
    """An aiosmtpd server in its own process that counts what it accepts."""
    from aiosmtpd.controller import Controller

    class Count:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with delivered.get_lock():
                delivered.value += 1
            return "250 OK"

    controller = Controller(Count(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


def start_smtp_server() -> tuple[multiprocessing.Process, int, Any]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    delivered = context.Value("i", 0)
    process = context.Process(target=smtp_server, args=(port, ready, delivered), daemon=True)
    process.start()
    if not ready.wait(30):
        raise RuntimeError("the SMTP server did not start")
    return process, port, delivered


def create_template() -> uuid.UUID:
    from channels import service
    from channels.schemas import TemplateCreate
    from core.db import session_scope

    with session_scope() as session:
        template = service.create_template(
            session,
            TemplateCreate(
                name="Bench newsletter",
                channel="email",
                subject="{{ contact.first_name }}, three ways to cut lead time",
                html=TEMPLATE_HTML,
            ),
        )
        return template.id


def midday_zone() -> str:
    """A fixed-offset zone where it is now between 10:00 and 18:00, so no quiet hours apply
    whenever the benchmark runs."""
    hour = datetime.now(UTC).hour
    offset = (13 - hour + 12) % 24 - 12  # local = UTC + offset lands near 13:00
    # Etc/GMT zones have inverted signs: Etc/GMT-8 is UTC+8.
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def create_deliveries(template_id: uuid.UUID, count: int, label: str) -> list[uuid.UUID]:
    from capture.models import Contact
    from channels.models import Delivery
    from core.db import session_scope

    now = datetime.now(UTC)
    zone = midday_zone()
    contact_ids = [uuid.uuid4() for _ in range(count)]
    delivery_ids = [uuid.uuid4() for _ in range(count)]
    with session_scope() as session:
        session.execute(
            insert(Contact),
            [
                {
                    "id": contact_id,
                    "email": f"{label}.{index}@bench.example",
                    "is_known": True,
                    "email_consent": "granted",
                    "timezone": zone,
                    "traits": {"first_name": f"Reader{index}", "company": "Chongqing Machines"},
                    "created_at": now,
                    "updated_at": now,
                }
                for index, contact_id in enumerate(contact_ids)
            ],
        )
        session.execute(
            insert(Delivery),
            [
                {
                    "id": delivery_id,
                    "idempotency_key": f"bench:{label}:{index}",
                    "contact_id": contact_ids[index],
                    "channel": "email",
                    "template_id": template_id,
                    "status": "queued",
                    "campaign": "bench",
                    "created_at": now,
                    "updated_at": now,
                }
                for index, delivery_id in enumerate(delivery_ids)
            ],
        )
    return delivery_ids


def as_tasks(delivery_ids: list[uuid.UUID]) -> list[list[uuid.UUID]]:
    """The send tasks a transaction recording these deliveries enqueues: one per send batch
    (channels.tasks.send_after_commit)."""
    from channels.settings import get_channel_settings

    size = get_channel_settings().send_batch_size
    return [delivery_ids[start : start + size] for start in range(0, len(delivery_ids), size)]


def analyze_tables() -> None:
    """Statistics for the rows just loaded, as autovacuum keeps them on a live database:
    without them PostgreSQL plans the send path's lookups for empty tables (sequential scans
    that cost it twice the CPU per email)."""
    from core.db import session_scope

    with session_scope() as session:
        session.execute(text("ANALYZE contacts, deliveries, identities"))


def deliver_share(tasks: list[Any]) -> Callable[[], None]:
    """What a Celery worker process does with its share of the send tasks (the workers take
    them in turn); the server's count checks that every message arrived."""
    from channels.sending import deliver_many
    from core.db import session_scope

    with session_scope():
        pass  # connected before the clock starts, as a long-running worker is

    def work() -> None:
        for delivery_ids in tasks:
            with session_scope() as session:
                statuses = deliver_many(session, delivery_ids)
            unsent = {status for status in statuses.values() if status not in ("sent", "sending")}
            if unsent:
                raise RuntimeError(f"deliveries {delivery_ids} ended {unsent}")

    return work


def send_composed_share(indexes: list[Any]) -> Callable[[], None]:
    """The SMTP provider alone: messages composed up front, sent one by one."""
    from channels.emails import compose
    from channels.models import Template
    from channels.outcome import Result
    from channels.providers.smtp import SmtpConnection
    from channels.settings import get_channel_settings
    from channels.templates import variables_for

    settings = get_channel_settings()
    template = Template(name="bench", subject="Hello {{ contact.first_name }}", html=TEMPLATE_HTML)
    messages = [
        compose(
            delivery_id=uuid.uuid4(),
            template=template,
            layout=None,
            variables=variables_for({"traits": {"first_name": f"Reader{index}"}}, {}),
            recipient=f"reader.{index}@bench.example",
            campaign="bench",
            marketing=True,
            settings=settings,
        )
        for index in indexes
    ]
    connection = SmtpConnection(settings)

    def work() -> None:
        for message in messages:
            outcome = connection.send(
                message.data, message.message_id, message.sender, "reader@bench.example"
            )
            if outcome.result is not Result.sent:
                raise RuntimeError(f"SMTP send ended {outcome}")
        connection.close()

    return work


def worker(
    prepare: Callable[[list[Any]], Callable[[], None]],
    share: list[Any],
    environment: dict[str, str],
    barrier: Barrier,
    results: Any,
) -> None:
    os.environ.clear()
    os.environ.update(environment)
    work = prepare(share)
    barrier.wait()
    try:
        work()
        results.put(None)
    except Exception as error:
        results.put(repr(error))


def run_workers(
    prepare: Callable[[list[Any]], Callable[[], None]],
    items: list[Any],
    messages_per_connection: int,
) -> float:
    """Seconds for WORKERS processes to get through `items` between them."""
    environment = {
        **os.environ,
        "NURTURE_SMTP_MESSAGES_PER_CONNECTION": str(messages_per_connection),
    }
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS + 1)
    results = context.Queue()
    processes = [
        context.Process(
            target=worker,
            args=(prepare, items[index::WORKERS], environment, barrier, results),
        )
        for index in range(WORKERS)
    ]
    for process in processes:
        process.start()
    barrier.wait(timeout=120)
    started = time.perf_counter()
    errors = [results.get(timeout=900) for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    if any(errors):
        raise RuntimeError("a worker failed: " + "; ".join(e for e in errors if e))
    return elapsed


def check_received(delivered: Any, seen: int, expected: int) -> int:
    received = delivered.value - seen
    if received != expected:
        raise RuntimeError(f"the SMTP server received {received} emails, expected {expected}")
    return int(delivered.value)
