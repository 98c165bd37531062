"""The durable capture queue between the fast accept path and the ingest worker.

Production uses a Redis Stream with a consumer group (entries stay pending until acked, and
entries of a dead consumer are reclaimed). The embedded mode uses a SQLite file with the same
claim/ack semantics. An entry is a JSON list of queue items (`capture.envelope` reads them):
one request's, or several small requests' merged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import redis
import redis.asyncio as aioredis

from core.settings import Settings, get_settings

INGEST_GROUP = "ingest"
# A Redis that drops packets must turn into a quick 503, not a hung request.
CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 5.0
CLAIM_TIMEOUT_SECONDS = 60


class QueueUnavailable(Exception):
    """The queue could not durably take the entry; the client must retry (HTTP 503)."""


class CaptureQueue(Protocol):
    async def put(self, payload: bytes) -> None: ...

    def put_sync(self, payload: bytes) -> None: ...

    def take(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, bytes]]: ...

    def ack(self, entry_ids: list[str]) -> None: ...

    def depth(self) -> int: ...


class RedisStreamQueue:
    def __init__(self, url: str, stream: str, claim_timeout: float = CLAIM_TIMEOUT_SECONDS) -> None:
        self.stream = stream
        self.claim_timeout = claim_timeout
        self._url = url
        self._sync = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
        )
        # redis-py turns each entry's fields into a dict in Python; these read the replies
        # straight into (id, payload) pairs, a third of the CPU a take costs.
        self._sync.set_response_callback("XREADGROUP", _read_entries)
        self._sync.set_response_callback("XAUTOCLAIM", _claimed_entries)
        self._async: aioredis.Redis | None = None
        self._group_ready = False
        self._waiting: list[tuple[bytes, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    def _async_client(self) -> aioredis.Redis:
        # One async client per event loop user; created lazily inside the running loop.
        if self._async is None:
            self._async = aioredis.Redis.from_url(
                self._url,
                single_connection_client=True,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=SOCKET_TIMEOUT_SECONDS,
            )
        return self._async

    async def put(self, payload: bytes) -> None:
        """Returns once Redis has the entry. One sender per process writes whatever has
        gathered meanwhile in one pipeline: far fewer round trips under load, and each
        caller still waits for its own entry's answer."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((payload, done))
        if self._sender is None:
            self._sender = loop.create_task(self._send_while_waiting())
        await done

    async def _send_while_waiting(self) -> None:
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, []
                pipe = self._async_client().pipeline(transaction=False)
                for entry in merged_entries([payload for payload, _ in waiting]):
                    pipe.xadd(self.stream, {"d": entry})
                try:
                    await pipe.execute()
                except (redis.RedisError, OSError) as exc:
                    for _, done in waiting:
                        if not done.done():  # a caller that went away was cancelled
                            done.set_exception(QueueUnavailable(str(exc)))
                    continue
                for _, done in waiting:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._sender = None

    def put_sync(self, payload: bytes) -> None:
        try:
            self._sync.xadd(self.stream, {"d": payload})
        except (redis.RedisError, OSError) as exc:
            raise QueueUnavailable(str(exc)) from exc

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._sync.xgroup_create(self.stream, INGEST_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def take(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        self._ensure_group()
        entries: list[tuple[str, bytes]] = self._sync.xautoclaim(
            self.stream, INGEST_GROUP, consumer, int(self.claim_timeout * 1000), "0-0", count=count
        )
        if not entries:
            entries = self._sync.xreadgroup(
                INGEST_GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms or None
            )
        return entries

    def ack(self, entry_ids: list[str]) -> None:
        if not entry_ids:
            return
        pipe = self._sync.pipeline(transaction=True)
        pipe.xack(self.stream, INGEST_GROUP, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)
        pipe.execute()

    def depth(self) -> int:
        return int(self._sync.xlen(self.stream))


class SqliteQueue:
    """Embedded queue: a WAL-mode SQLite file with synchronous=FULL, so a 2xx survives a crash."""

    def __init__(self, path: Path, claim_timeout: float = CLAIM_TIMEOUT_SECONDS) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueUnavailable(str(exc)) from exc
        self.path = path
        self.claim_timeout = claim_timeout
        self._local = threading.local()
        try:
            self._connection().execute(
                "CREATE TABLE IF NOT EXISTS capture_queue ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,"
                " claimed_at REAL, claimed_by TEXT)"
            )
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    async def put(self, payload: bytes) -> None:
        # The fsync behind synchronous=FULL must not stall the event loop.
        await anyio.to_thread.run_sync(self.put_sync, payload)

    def put_sync(self, payload: bytes) -> None:
        try:
            self._connection().execute("INSERT INTO capture_queue (payload) VALUES (?)", (payload,))
        except sqlite3.Error as exc:
            raise QueueUnavailable(str(exc)) from exc

    def take(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            now = time.time()
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "UPDATE capture_queue SET claimed_at = ?, claimed_by = ? WHERE id IN ("
                    " SELECT id FROM capture_queue WHERE claimed_at IS NULL"
                    " OR claimed_at <= ? ORDER BY id LIMIT ?) RETURNING id, payload",
                    (now, consumer, now - self.claim_timeout, count),
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if rows or time.monotonic() >= deadline:
                return [(str(row[0]), row[1]) for row in sorted(rows)]
            time.sleep(0.05)

    def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            marks = ",".join("?" * len(entry_ids))
            self._connection().execute(
                f"DELETE FROM capture_queue WHERE id IN ({marks})", [int(i) for i in entry_ids]
            )

    def depth(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM capture_queue").fetchone()[0])


MAX_MERGED_ENTRY_BYTES = 1_000_000
# A payload this large (a batch call) is an entry of its own: merging it would only copy it.
OWN_ENTRY_BYTES = 16_384


def merged_entries(payloads: list[bytes]) -> list[bytes]:
    """Joins small payloads (each a JSON list of queue items) into few large lists, so a busy
    API process writes one stream entry per flush instead of one per single call."""
    entries: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for payload in payloads:
        if payload == b"[]":
            continue
        own_entry = len(payload) >= OWN_ENTRY_BYTES
        if chunk and (own_entry or size + len(payload) > MAX_MERGED_ENTRY_BYTES):
            entries.append(_joined(chunk))
            chunk, size = [], 0
        if own_entry:
            entries.append(payload)
        else:
            chunk.append(payload)
            size += len(payload)
    if chunk:
        entries.append(_joined(chunk))
    return entries


def _joined(payloads: list[bytes]) -> bytes:
    if len(payloads) == 1:
        return payloads[0]
    return b"[" + b",".join(payload[1:-1] for payload in payloads) + b"]"


def _read_entries(reply: Any, **_options: Any) -> list[tuple[str, bytes]]:
    """XREADGROUP of one stream: a map of stream to entries (RESP3), a list of [stream,
    entries] pairs (RESP2) or nil when nothing came."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _, entries in reply)
    return [pair for entries in streams for pair in _payloads(entries)]


def _claimed_entries(reply: Any, **_options: Any) -> list[tuple[str, bytes]]:
    """XAUTOCLAIM: [next start, entries, ids of entries deleted meanwhile]."""
    return _payloads(reply[1])


def _payloads(entries: list[Any]) -> list[tuple[str, bytes]]:
    # An entry deleted while pending comes back without fields.
    return [(_text(eid), _payload(fields)) for eid, fields in entries if fields]


def _payload(fields: list[bytes]) -> bytes:
    return fields[1] if fields[0] == b"d" else fields[fields.index(b"d") + 1]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_queue: CaptureQueue | None = None


def build_queue(settings: Settings, claim_timeout: float = CLAIM_TIMEOUT_SECONDS) -> CaptureQueue:
    if settings.redis_url:
        return RedisStreamQueue(settings.redis_url, settings.capture_stream, claim_timeout)
    return SqliteQueue(settings.data_dir / "capture-queue.sqlite3", claim_timeout)


def get_queue() -> CaptureQueue:
    global _queue
    if _queue is None:
        _queue = build_queue(get_settings())
    return _queue


def reset_queue() -> None:
    global _queue
    _queue = None
