"""The knobs of one benchmark run, set on the command line and handed to every group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    seconds: float = 10.0
    events: int = 100_000
