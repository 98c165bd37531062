"""The capture queue's own guarantees."""

from __future__ import annotations

import asyncio

import orjson

from capture.queue import MAX_MERGED_ENTRY_BYTES, OWN_ENTRY_BYTES, get_queue, merged_entries


def test_merged_entries_keep_every_envelope_in_order():
    payloads = [orjson.dumps([{"n": i}, {"n": i, "second": True}]) for i in range(5)]
    [entry] = merged_entries([*payloads, b"[]"])
    assert orjson.loads(entry) == [e for p in payloads for e in orjson.loads(p)]


def test_merged_entries_are_split_before_they_grow_too_large():
    small = orjson.dumps([{"blob": "x" * (OWN_ENTRY_BYTES // 2)}])
    count = 2 * MAX_MERGED_ENTRY_BYTES // len(small) + 1
    entries = merged_entries([small] * count)
    assert len(entries) == 3
    assert all(len(entry) <= MAX_MERGED_ENTRY_BYTES for entry in entries)
    assert sum(len(orjson.loads(e)) for e in entries) == count


def test_a_large_payload_is_an_entry_of_its_own_in_order():
    small = [orjson.dumps([{"n": i}]) for i in range(4)]
    large = orjson.dumps([{"blob": "x" * OWN_ENTRY_BYTES}])
    entries = merged_entries([small[0], small[1], large, small[2], small[3]])
    assert entries[1] is large
    assert [orjson.loads(e) for e in entries] == [
        [{"n": 0}, {"n": 1}],
        orjson.loads(large),
        [{"n": 2}, {"n": 3}],
    ]


def test_concurrent_puts_are_all_stored(pg_backend):
    queue = get_queue()

    async def put_many() -> None:
        await asyncio.gather(*(queue.put(orjson.dumps([{"n": i}])) for i in range(200)))

    asyncio.run(put_many())
    taken = queue.take("t", 1000, 0)
    numbers = sorted(e["n"] for _, payload in taken for e in orjson.loads(payload))
    assert numbers == list(range(200))
    assert len(taken) < 200  # gathered into few stream entries


def test_a_reclaim_hands_over_pending_entries_in_order_and_skips_deleted_ones(pg_backend):
    from capture.queue import RedisStreamQueue

    queue = get_queue()
    assert isinstance(queue, RedisStreamQueue)
    for n in range(3):
        queue.put_sync(orjson.dumps([{"n": n}]))
    taken = queue.take("dies", 10, 0)
    assert [orjson.loads(payload) for _, payload in taken] == [[{"n": 0}], [{"n": 1}], [{"n": 2}]]
    queue._sync.xdel(queue.stream, taken[1][0])  # removed while still pending

    impatient = RedisStreamQueue(queue._url, queue.stream, claim_timeout=0)
    reclaimed = impatient.take("rescuer", 10, 0)
    assert reclaimed == [taken[0], taken[2]]
    assert all(isinstance(entry_id, str) for entry_id, _ in reclaimed)
