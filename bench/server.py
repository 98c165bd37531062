"""Runs an ASGI app under uvicorn the way production does (one process, uvloop, httptools,
no access log), pinned to its own core so the load generator does not steal its time.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.cpu import cpu_seconds_of

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = 0
LOAD_CORE = 1
# Importing the whole service takes seconds, and far longer on a machine shared under load.
STARTUP_SECONDS = 120


def pinned(command: list[str], core: int) -> list[str]:
    """Prefixes `taskset -c core` when the machine lets us split server and load generator."""
    if shutil.which("taskset") and {SERVER_CORE, LOAD_CORE} <= os.sched_getaffinity(0):
        return ["taskset", "-c", str(core), *command]
    return command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used (user + system), where /proc tells it. On a
        shared machine two servers' CPU per request compare more steadily than their rates."""
        return cpu_seconds_of(self.pid)


@contextmanager
def serve(app: str, environment: Mapping[str, str]) -> Iterator[Server]:
    """Starts uvicorn with `app` ("module:attribute"), yields it, stops it after."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            pinned(command, SERVER_CORE),
            cwd=REPO_ROOT,
            env=dict(environment),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_listening(process, port, log)
            # taskset execs uvicorn, so the pid is the server's own.
            yield Server(f"http://127.0.0.1:{port}", process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{_tail(log)}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    raise RuntimeError(
        f"the server did not listen on port {port} within {STARTUP_SECONDS} s:\n{_tail(log)}"
    )


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]
