"""The `nurture` command line: run the service or one of its parts, migrate, make keys."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from core.compiled import drop_stale
from core.settings import get_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nurture", description="Nurture marketing automation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in (
        ("run", "API, worker and scheduler in one (what `make run` calls)"),
        ("serve", "the HTTP API only"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--host", default=None)
        sub.add_argument("--port", type=int, default=None)
        if name == "serve":
            sub.add_argument("--workers", type=int, default=1)
    worker = commands.add_parser("worker", help="Celery worker and the capture ingest loop")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--loglevel", default="info")
    scheduler = commands.add_parser("scheduler", help="the beat scheduler")
    scheduler.add_argument("--loglevel", default="info")
    commands.add_parser("migrate", help="apply database migrations")
    mail_in = commands.add_parser(
        "mail-in", help="SMTP server for the List-Unsubscribe mailto address (point its MX here)"
    )
    mail_in.add_argument("--host", default="0.0.0.0")  # noqa: S104 (an MX must be reachable)
    mail_in.add_argument("--port", type=int, default=25)

    sources = commands.add_parser("sources", help="manage sources").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create_source = sources.add_parser("create", help="create a source and its write key")
    create_source.add_argument("--name", required=True)
    create_source.add_argument("--origin", action="append", default=[], dest="origins")
    create_source.add_argument("--honor-dnt", action="store_true")

    keys = commands.add_parser("keys", help="manage admin API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create_key = keys.add_parser("create", help="create an admin API key (shown once)")
    create_key.add_argument("--name", required=True)
    create_key.add_argument(
        "--role", required=True, choices=["admin", "marketer", "manager", "rep", "finance"]
    )
    simulate = commands.add_parser(
        "simulate", help="load a simulated population with known ground truth (scoring/simulation)"
    )
    simulate.add_argument("--contacts", type=int, default=10_000)
    simulate.add_argument("--days", type=int, default=180)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--end", default=None, help="ISO date the period ends (default today)")
    simulate.add_argument("--via", choices=["batch", "capture"], default="batch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    drop_stale()  # before any command imports a compiled module
    handler = {
        "run": cmd_run,
        "serve": cmd_serve,
        "worker": cmd_worker,
        "scheduler": cmd_scheduler,
        "migrate": cmd_migrate,
        "mail-in": cmd_mail_in,
        "sources": cmd_sources,
        "keys": cmd_keys,
        "simulate": cmd_simulate,
    }[args.command]
    return handler(args) or 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    from core.migrate import upgrade

    upgrade(get_settings().resolved_database_url)
    print("database is up to date")
    return 0


def cmd_mail_in(args: argparse.Namespace) -> int:
    import logging

    from channels.inbound_mail import serve_forever

    logging.basicConfig(level=logging.INFO)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command
    serve_forever(args.host, args.port)
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from capture.sources import create_source
    from core.db import session_scope

    with session_scope() as session:
        source, write_key = create_source(session, args.name, args.origins, args.honor_dnt)
        out = {
            "id": str(source.id),
            "name": source.name,
            "write_key": write_key,
            "allowed_origins": source.allowed_origins,
        }
    print(json.dumps(out, indent=2))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from core.db import session_scope
    from core.keys import Role, create_api_key

    with session_scope() as session:
        api_key, plain = create_api_key(session, args.name, Role(args.role))
        out = {"id": str(api_key.id), "name": api_key.name, "role": api_key.role, "key": plain}
    print(json.dumps(out, indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from datetime import UTC, datetime

    from scoring.simulation import SimulationError, simulate

    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC) if args.end else None
    try:
        summary = simulate(args.contacts, args.days, args.seed, end=end, via=args.via)
    except SimulationError as exc:
        print(f"nurture simulate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(summary), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "api.main:app",
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=getattr(args, "workers", 1),
        proxy_headers=True,
        log_level="info",
    )
    return 0


def _ingest_process() -> None:
    import logging

    from capture.ingest import run_forever
    from worker.tasks import dispatch_on_commit

    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s: %(levelname)s/ingest] %(message)s"
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dispatch_on_commit()  # each commit that stored events asks for a feed dispatch
    run_forever()


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.app import celery_app

    ingest = multiprocessing.get_context("spawn").Process(
        target=_ingest_process, name="nurture-ingest", daemon=True
    )
    ingest.start()
    pool = ["--pool=threads"] if get_settings().is_embedded else []
    try:
        celery_app.worker_main(
            ["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}", *pool]
        )
    finally:
        ingest.terminate()
        ingest.join(5)
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from worker.app import celery_app

    celery_app.start(["beat", f"--loglevel={args.loglevel}"])
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Migrates, then runs API, worker and scheduler as child processes until interrupted."""
    settings = get_settings()
    cmd_migrate(args)
    host, port = args.host or settings.host, args.port or settings.port
    exe = [sys.executable, "-m", "core.cli"]
    children = [
        subprocess.Popen([*exe, "serve", "--host", host, "--port", str(port)]),  # noqa: S603
        subprocess.Popen([*exe, "worker", "--loglevel", "warning"]),  # noqa: S603
        subprocess.Popen([*exe, "scheduler", "--loglevel", "warning"]),  # noqa: S603
    ]
    print(
        f"\nNurture is listening on http://{host}:{port} (API docs: http://{host}:{port}/docs)\n"
        f"Data lives in {settings.data_dir.resolve()}\n"
        "Create a write key:  .venv/bin/nurture sources create --name 'My site' "
        f"--origin https://www.example.com\n"
        "Create an admin key: .venv/bin/nurture keys create --name me --role admin\n",
        flush=True,
    )

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        stop(0, None)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
