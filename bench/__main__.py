"""`python -m bench [group ...]`: runs the named benchmark groups (all when none is named),
prints the figures as a table and saves them to bench/results.json.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from bench import attribution, capture, channels, handoff, ingest, journeys, results, scoring
from bench.options import Options

GROUPS: dict[str, Callable[[Options], None]] = {
    "capture": capture.run,
    "ingest": ingest.run,
    "channels": channels.run,
    "attribution": attribution.run,
    "scoring": scoring.run,
    "journeys": journeys.run,
    "handoff": handoff.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("groups", nargs="*", metavar="group", help=", ".join(GROUPS))
    parser.add_argument(
        "--seconds", type=float, default=Options.seconds, help="length of each load run"
    )
    parser.add_argument(
        "--events", type=int, default=Options.events, help="events queued for the ingest run"
    )
    arguments = parser.parse_args(argv)
    unknown = [name for name in arguments.groups if name not in GROUPS]
    if unknown:
        parser.error(f"unknown group {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    options = Options(seconds=arguments.seconds, events=arguments.events)

    chosen = arguments.groups or list(GROUPS)
    if not arguments.groups:
        results.start_fresh()
    failed = []
    for name in chosen:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            GROUPS[name](options)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)

    print()
    print(results.table())
    print(f"\nsaved to {results.RESULTS_PATH}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
