"""Storing parsed ingest batches on parallel lanes (PostgreSQL): while PostgreSQL works on one
lane's transaction, Python prepares another's, so a worker process keeps both cores busy.

Each batch is split by visitor, so a visitor's messages always take the same lane, in order,
and two lanes seldom touch the same contact. When they do (one person on two devices),
PostgreSQL's row locks order them, `RaceLost` sends a batch the careful way, and a deadlock
is retried. A batch's queue entries are acked once all its parts are committed; a part that
fails leaves them pending, and its redelivery skips the messages already stored.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Part = TypeVar("Part")
Result = TypeVar("Result")

# Parts a lane may hold beyond the one it is storing: enough that a lane never waits for the
# other to be handed its next part, few enough to bound the memory of parsed batches.
QUEUED_PER_LANE = 1


class StoreLanes(Generic[Part, Result]):
    """Stores each batch's parts on their lanes; `finish()` waits for all and returns the
    results, raising the first failure. With one lane, parts are stored on the calling
    thread."""

    def __init__(
        self,
        lanes: int,
        store_part: Callable[[Part], Result],
        ack: Callable[[list[str]], None],
    ) -> None:
        self.count = max(lanes, 1)
        self.store_part = store_part
        self.ack = ack
        self.results: list[Result] = []
        self.executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"ingest-lane-{lane}")
            for lane in range(self.count if self.count > 1 else 0)
        ]
        self.pending: list[deque[Future[Result]]] = [deque() for _ in self.executors]

    def store(self, entry_ids: list[str], parts: Sequence[Part]) -> None:
        """Stores part i of a batch on lane i; acks `entry_ids` once every part has committed."""
        if not self.executors:
            for part in parts:
                self.results.append(self.store_part(part))
            self.ack(entry_ids)
            return
        countdown = _Countdown(len(parts), lambda: self.ack(entry_ids))
        for lane, part in enumerate(parts):
            waiting = self.pending[lane]
            while len(waiting) > QUEUED_PER_LANE:
                self._collect(waiting.popleft())
            future = self.executors[lane].submit(self.store_part, part)
            future.add_done_callback(countdown.part_done)
            waiting.append(future)

    def finish(self) -> list[Result]:
        for waiting in self.pending:
            while waiting:
                self._collect(waiting.popleft())
        return self.results

    def _collect(self, future: Future[Result]) -> None:
        # Only the calling thread collects, so the results list needs no lock.
        self.results.append(future.result())

    def __enter__(self) -> StoreLanes[Part, Result]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        # Parts already handed to a lane are stored (or fail) before the lanes go away.
        for executor in self.executors:
            executor.shutdown(wait=True)


class _Countdown:
    """Calls `then` once `parts` parts have finished, all successfully."""

    def __init__(self, parts: int, then: Callable[[], None]) -> None:
        self.left = parts
        self.failed = False
        self.then = then
        self.lock = threading.Lock()

    def part_done(self, future: Future[Any]) -> None:
        with self.lock:
            self.left -= 1
            self.failed = self.failed or future.exception() is not None
            finished = self.left == 0 and not self.failed
        if finished:
            try:
                self.then()
            except Exception:
                # The entries stay pending and come back; their messages are skipped as stored.
                log.exception("acking an ingest batch failed; it will be redelivered")
