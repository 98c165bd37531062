"""CPU time of local processes, read from /proc (Linux). On a shared machine whose speed
swings, CPU per unit of work compares runs more steadily than rates do."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds_of(pid: int) -> float | None:
    """User + system CPU time of process `pid`; None where /proc does not tell it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return _cpu_seconds(stat)


def postgres_cpu_seconds() -> float | None:
    """CPU time of every PostgreSQL process alive on this machine (backends, WAL writer,
    autovacuum...); None where /proc does not tell it. A backend that exits between two
    readings takes its time with it: read the second while the connections are open."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0.0
    for stat_path in proc.glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:
            continue  # the process ended while we looked
        if stat[stat.index("(") + 1 :].startswith("postgres"):
            total += _cpu_seconds(stat)
    return total


def _cpu_seconds(stat: str) -> float:
    # The command name, in parentheses, may hold spaces: fields are counted after it.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
