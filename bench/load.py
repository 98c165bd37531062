"""Drives HTTP load with wrk: one fixed POST, requests per second back, any failure is loud."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.server import LOAD_CORE, pinned

THREADS = 2
CONNECTIONS = 50
SUMMARY_MARKER = "BENCH_SUMMARY "

# wrk calls done() once after all threads stop; printing the summary as JSON spares us from
# parsing its human-readable report.
DONE_FUNCTION = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    marker, summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


class LoadError(RuntimeError):
    """wrk failed, or the server answered something other than 2xx."""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


def check_post(url: str, body: bytes, headers: Mapping[str, str]) -> None:
    """One request before the load: wrk only counts failures, it cannot say why."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise LoadError(f"POST {url} answered {response.status}: {response.read()[:500]!r}")
    except urllib.error.HTTPError as error:
        raise LoadError(f"POST {url} answered {error.code}: {error.read()[:500]!r}") from error


def post_load(url: str, body: bytes, headers: Mapping[str, str], seconds: float) -> LoadResult:
    """Sends the same POST from wrk for `seconds`; raises LoadError on any error it counted."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadError("wrk is not installed (scripts/ensure-services installs it as root)")
    with tempfile.TemporaryDirectory(prefix="nurture-bench-wrk-") as folder:
        script = Path(folder) / "post.lua"
        script.write_bytes(_lua_script(body, headers))
        command = [
            wrk,
            f"--threads={THREADS}",
            f"--connections={CONNECTIONS}",
            f"--duration={seconds:g}s",
            "--timeout=10s",
            f"--script={script}",
            url,
        ]
        completed = subprocess.run(
            pinned(command, LOAD_CORE), capture_output=True, text=True, check=False
        )
    # wrk exits 0 even when its Lua script fails, so anything on stderr is a failure too.
    if completed.returncode != 0 or completed.stderr.strip():
        raise LoadError(f"wrk exited with {completed.returncode}: {completed.stderr.strip()}")
    summary = _summary(completed.stdout)
    failures = {k: summary[k] for k in ("connect", "read", "write", "status", "timeout")}
    if any(failures.values()) or not summary["requests"]:
        raise LoadError(f"wrk against {url} counted failures {failures}:\n{completed.stdout}")
    return LoadResult(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
    )


def _lua_script(body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [
        b'wrk.method = "POST"',
        b"wrk.body = " + _lua_string(body),
        *(
            # The spaces matter: `t[[` would open a long string instead of indexing `t`.
            b"wrk.headers[ " + _lua_string(k.encode()) + b" ] = " + _lua_string(v.encode())
            for k, v in headers.items()
        ),
        b"local marker = " + _lua_string(SUMMARY_MARKER.encode()),
        DONE_FUNCTION.encode(),
    ]
    return b"\n".join(lines)


def _lua_string(value: bytes) -> bytes:
    """A Lua long-bracket literal, with a level whose closing bracket is not in the value."""
    level = 0
    while b"]" + b"=" * level + b"]" in value:
        level += 1
    # A long bracket drops a newline right after the opening one, so lead with one of ours.
    return b"[" + b"=" * level + b"[\n" + value + b"]" + b"=" * level + b"]"


def _summary(output: str) -> dict[str, int]:
    for line in output.splitlines():
        if line.startswith(SUMMARY_MARKER):
            parsed: dict[str, int] = json.loads(line.removeprefix(SUMMARY_MARKER))
            return parsed
    raise LoadError(f"wrk printed no summary:\n{output}")
