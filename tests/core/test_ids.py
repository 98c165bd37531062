"""Ids drawn in blocks are as random and as well-formed as uuid4's."""

from __future__ import annotations

import uuid
from itertools import islice

from core.ids import random_ids


def test_random_ids_are_distinct_version_4_ids_across_blocks():
    ids = list(islice(random_ids(block=8), 100))
    assert len(set(ids)) == 100
    assert {(i.version, i.variant) for i in ids} == {(4, uuid.RFC_4122)}
