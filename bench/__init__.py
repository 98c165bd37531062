"""Benchmarks printed by `make bench`; each issue records its figures with `record()`."""

from bench.results import at_least, at_most, record

__all__ = ["at_least", "at_most", "record"]
