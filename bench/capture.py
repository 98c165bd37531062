"""Capture benchmarks: single `/v1/track` calls against a bare ASGI app, and `/v1/batch` events.

Both servers run as in production (one uvicorn process with uvloop and httptools) on one
core with wrk on the other; the tracking API writes to a real PostgreSQL and Redis stream.
"""

from __future__ import annotations

import base64
import statistics

import orjson

from bench import events
from bench.environment import BenchEnvironment, bench_environment
from bench.load import LoadError, LoadResult, check_post, post_load
from bench.options import Options
from bench.results import at_least, record
from bench.server import Server, serve

REPETITIONS = 3
WARM_UP_SECONDS = 2.0
BATCH_SIZE = 100


def run(options: Options) -> None:
    with bench_environment() as environment:
        headers = {
            "Content-Type": "application/json",
            "Authorization": "Basic "
            + base64.b64encode(f"{environment.write_key}:".encode()).decode(),
        }
        browser = events.browser_messages(50, visitors=10)
        track_body = orjson.dumps(next(m for m in browser if m["type"] == "track"))
        batch = events.server_batch(BATCH_SIZE)
        batch_body = orjson.dumps({"batch": batch})
        print(
            f"  /v1/track body {len(track_body)} bytes; /v1/batch body {len(batch_body)} bytes "
            f"({BATCH_SIZE} events, {len(batch_body) // BATCH_SIZE} bytes each)"
        )
        server_environment = environment.server_environment()
        with (
            serve("bench.hello_asgi:app", server_environment) as hello_server,
            serve("api.main:app", server_environment) as api_server,
        ):
            hello = Endpoint(hello_server, "/", track_body, headers, environment)
            track = Endpoint(api_server, "/v1/track", track_body, headers, environment, 1)
            batch_endpoint = Endpoint(
                api_server, "/v1/batch", batch_body, headers, environment, BATCH_SIZE
            )
            for endpoint in (hello, track, batch_endpoint):
                endpoint.warm_up()

            hello_runs, track_runs = [], []
            for repetition in range(1, REPETITIONS + 1):
                hello_runs.append(hello.measure(options.seconds, f"hello ASGI   #{repetition}"))
                track_runs.append(track.measure(options.seconds, f"/v1/track    #{repetition}"))
            batch_runs = [
                batch_endpoint.measure(options.seconds, f"/v1/batch    #{repetition}")
                for repetition in range(1, REPETITIONS + 1)
            ]

    baseline = record(
        "capture.hello_asgi.requests_per_second", _median_rate(hello_runs), "requests/s"
    )
    record(
        "capture.track.requests_per_second",
        _median_rate(track_runs),
        "requests/s",
        baseline=baseline,
        target=at_least(0.4, of="ratio"),
    )
    record(
        "capture.batch.events_per_second",
        _median_rate(batch_runs) * BATCH_SIZE,
        "events/s",
        target=at_least(50_000),
    )


class Endpoint:
    """One URL and the POST wrk repeats against it; checks every answered request was queued."""

    def __init__(
        self,
        server: Server,
        path: str,
        body: bytes,
        headers: dict[str, str],
        environment: BenchEnvironment,
        events_per_request: int = 0,
    ) -> None:
        self.server = server
        self.url = server.url + path
        self.body = body
        self.headers = headers
        self.environment = environment
        self.events_per_request = events_per_request

    def warm_up(self) -> None:
        check_post(self.url, self.body, self.headers)
        post_load(self.url, self.body, self.headers, WARM_UP_SECONDS)
        self.environment.clear_queue()

    def measure(self, seconds: float, label: str) -> LoadResult:
        self.environment.clear_queue()
        cpu_before = self.server.cpu_seconds()
        result = post_load(self.url, self.body, self.headers, seconds)
        cpu_after = self.server.cpu_seconds()
        expected = result.requests * self.events_per_request
        queued = self.environment.queued_events() if expected else 0
        if queued < expected:
            raise LoadError(f"{label}: {expected} events answered 200 but {queued} were queued")
        self.environment.clear_queue()
        cpu = ""
        if cpu_before is not None and cpu_after is not None:
            cpu = f"  server CPU {(cpu_after - cpu_before) / result.requests * 1e6:6.1f} µs/request"
        print(
            f"  {label}: {result.requests_per_second:9,.0f} requests/s  "
            f"p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms{cpu}"
        )
        return result


def _median_rate(runs: list[LoadResult]) -> float:
    return statistics.median(run.requests_per_second for run in runs)
