"""Parsing queued envelopes: what it leaves behind for the cycle collector."""

from __future__ import annotations

import gc
import uuid

from bench.events import queue_entries
from capture.ingest import decode_entries
from capture.parsing import parse_batch


def test_parsing_a_batch_leaves_no_reference_cycles():
    # Reference counting frees what parsing makes; a cycle per message (a mypyc closure, say)
    # would leave it to the cycle collector, whose passes cost ingest a tenth of its CPU.
    entries = queue_entries(2_000, 400, str(uuid.uuid4()))
    envelopes = decode_entries([(str(index), entry) for index, entry in enumerate(entries)])
    gc.collect()
    gc.disable()
    try:
        batch = parse_batch(envelopes)
        assert any(message.campaign_touch is not None for message in batch.messages)
        assert any(message.type == "identify" for message in batch.messages)
        del batch, envelopes
        assert gc.collect() == 0
    finally:
        gc.enable()
