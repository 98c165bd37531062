"""The benchmark figures: `record()` one, and they land in `bench/results.json` and the table.

Every group of every issue records through `record()`, so all figures share one file and shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.clock import clock

RESULTS_PATH = Path(__file__).parent / "results.json"


@dataclass(frozen=True)
class Target:
    """A bound on a figure's value, or on its ratio to the baseline."""

    bound: float
    of: Literal["value", "ratio"] = "value"
    at_most: bool = False

    def met_by(self, value: float, ratio: float | None) -> bool | None:
        measured = value if self.of == "value" else ratio
        if measured is None:
            return None
        return measured <= self.bound if self.at_most else measured >= self.bound

    def as_json(self) -> dict[str, Any]:
        return {"of": self.of, "at_most" if self.at_most else "at_least": self.bound}

    def describe(self) -> str:
        sign = "<=" if self.at_most else ">="
        suffix = " x baseline" if self.of == "ratio" else ""
        return f"{sign} {_number(self.bound)}{suffix}"


def at_least(bound: float, of: Literal["value", "ratio"] = "value") -> Target:
    return Target(bound, of)


def at_most(bound: float, of: Literal["value", "ratio"] = "value") -> Target:
    return Target(bound, of, at_most=True)


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline: Figure | None
    target: Target | None
    measured_at: str

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.value:
            return None
        return self.value / self.baseline.value

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.target.met_by(self.value, self.ratio)

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "baseline": None
            if self.baseline is None
            else {
                "name": self.baseline.name,
                "value": round(self.baseline.value, 3),
                "unit": self.baseline.unit,
            },
            "ratio": None if ratio is None else round(ratio, 4),
            "target": None if self.target is None else self.target.as_json(),
            "meets_target": self.meets_target,
            "measured_at": self.measured_at,
        }


@dataclass(frozen=True)
class NotRun:
    name: str
    reason: str


recorded: list[Figure | NotRun] = []


def record(
    name: str,
    value: float,
    unit: str,
    baseline: Figure | None = None,
    target: Target | None = None,
) -> Figure:
    """Keeps the figure for this run's table and saves it in results.json (same name replaced)."""
    figure = Figure(name, value, unit, baseline, target, clock.now().isoformat(timespec="seconds"))
    recorded.append(figure)
    saved = [entry for entry in _load() if entry.get("name") != name]
    _save([*saved, figure.as_json()])
    return figure


def not_run(name: str, reason: str) -> None:
    """Shows in this run's table why a figure is missing; nothing is saved for it."""
    recorded.append(NotRun(name, reason))


def start_fresh() -> None:
    """A full run replaces the file, so no figure in it is older than the run."""
    _save([])


def _load() -> list[dict[str, Any]]:
    if not RESULTS_PATH.exists():
        return []
    entries = json.loads(RESULTS_PATH.read_text())
    return entries if isinstance(entries, list) else []


def _save(entries: list[dict[str, Any]]) -> None:
    RESULTS_PATH.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")


def table() -> str:
    header = ("figure", "value", "unit", "baseline", "ratio", "target", "met?")
    rows = [header]
    for entry in recorded:
        if isinstance(entry, NotRun):
            rows.append((entry.name, "not run", "", "", "", "", entry.reason))
            continue
        ratio = entry.ratio
        met = entry.meets_target
        rows.append(
            (
                entry.name,
                _number(entry.value),
                entry.unit,
                "" if entry.baseline is None else _number(entry.baseline.value),
                "" if ratio is None else f"{ratio:.3f}",
                "" if entry.target is None else entry.target.describe(),
                "" if met is None else ("yes" if met else "NO"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.3g}" if abs(value) < 1 else f"{value:,.2f}"
