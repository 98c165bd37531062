"""`nurture run` on embedded defaults (SQLite + embedded broker, no servers): the API
accepts events, the worker's ingest loop stores them, and the CLI makes keys."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nurture(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "core.cli", *args], env=env, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_nurture_run_serves_and_ingests_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env["NURTURE_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "run", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(healthy, 60), "the API did not come up"
        source = nurture(env, "sources", "create", "--name", "site")
        key = nurture(env, "keys", "create", "--name", "ops", "--role", "admin")
        assert source["write_key"].startswith("wk_") and key["key"].startswith("nk_")

        response = httpx.post(
            base + "/v1/track",
            auth=(source["write_key"], ""),
            headers={"User-Agent": CHROME},
            json={"anonymousId": "a-1", "event": "Pricing Viewed"},
        )
        assert response.status_code == 200, response.text

        database = tmp_path / "data" / "nurture.sqlite3"

        def stored() -> bool:
            with sqlite3.connect(database) as conn:
                return conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1

        assert wait_for(stored, 30), "the worker did not ingest the event"
        with sqlite3.connect(database) as conn:
            stored_hash = conn.execute("SELECT key_hash FROM api_keys").fetchone()[0]
        assert key["key"] not in stored_hash  # keys are stored hashed, never in plain
    finally:
        service.terminate()
        try:
            output, _ = service.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            output, _ = service.communicate()
    assert "listening on http://127.0.0.1:" in output
    assert service.returncode == 0, output[-3000:]
