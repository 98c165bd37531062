"""Attribution benchmarks: the Markov (order 1) and Shapley models over 1,000,000 synthetic
conversion paths, each timed from the paths in memory to every path's value split to the fen;
the ROI report over the API on a simulated year of 100,000 contacts in PostgreSQL, both the
first request after a batch of new conversions (not credited yet: pending) and repeats; and
each model's channel shares against the simulator's true channel effects (`nurture simulate`).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import insert

from attribution import credits, truth
from attribution.costs import CostLine, import_costs
from attribution.db_models import Conversion
from attribution.models import PathSet, markov_credits, shapley_credits
from attribution.service import record_conversion
from bench.environment import bench_environment
from bench.options import Options
from bench.results import at_most, record
from capture.models import Contact, Visit
from core.db import session_scope
from core.keys import Role, create_api_key
from core.models import table_of

PATHS = 1_000_000
CHANNELS = (
    "paid_search",
    "organic_search",
    "paid_social",
    "organic_social",
    "email",
    "sms",
    "display",
    "referral",
    "direct",
    "affiliate",
)


def synthetic_paths(count: int, seed: int = 7) -> tuple[PathSet, np.ndarray]:
    """Paths of 1 + Geometric touches over ten channels; each channel touched raises the odds
    of converting by its own amount, and a conversion is worth 1,000 to 100,000 yuan."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.35, size=count), 20).astype(np.int64)
    popularity = rng.dirichlet(np.ones(len(CHANNELS)) * 2)
    keys = rng.choice(len(CHANNELS), size=int(lengths.sum()), p=popularity).astype(np.int64)
    lift = np.linspace(-0.4, 0.9, len(CHANNELS))
    path_of_touch = np.repeat(np.arange(count), lengths)
    log_odds = -3.0 + np.bincount(path_of_touch, weights=lift[keys], minlength=count)
    converted = (rng.random(count) < 1 / (1 + np.exp(-log_odds))).astype(np.float64)
    values = (converted * rng.integers(1_000_00, 100_000_00, size=count)).astype(np.int64)
    paths = PathSet(CHANNELS, keys, lengths, converted, 1.0 - converted)
    return paths, values


def _timed(
    name: str,
    split: Callable[[PathSet, np.ndarray], np.ndarray],
    paths: PathSet,
    values: np.ndarray,
) -> None:
    fresh = PathSet(paths.names, paths.keys, paths.lengths, paths.conversions, paths.nulls)
    started = time.perf_counter()
    credits = split(fresh, values)
    seconds = time.perf_counter() - started
    per_path = np.add.reduceat(credits, fresh.offsets[:-1])
    if not np.array_equal(per_path, values):
        raise RuntimeError(f"{name}: credits do not add up to every path's value")
    print(f"  {name}: {seconds:.2f} s for {len(values):,} paths, every path reconciled to the fen")
    record(f"attribution.{name}_1m_paths_seconds", seconds, "s", target=at_most(10))


def run(options: Options) -> None:
    paths, values = synthetic_paths(PATHS)
    print(
        f"  {PATHS:,} paths, {len(paths.keys):,} touches, "
        f"{int(paths.conversions.sum()):,} conversions"
    )
    _timed("markov", markov_credits, paths, values)
    _timed("shapley", shapley_credits, paths, values)
    with bench_environment() as environment:
        contact_ids = _load_year(environment.source_id)
        _time_reports(contact_ids)
    with bench_environment():
        _compare_with_truth()


YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)
CONTACTS = 100_000
PAID = {"paid_search": 4, "paid_social": 3, "display": 2, "email": 3, "sms": 2}
ROWS_PER_INSERT = 20_000


def _load_year(source_id: uuid.UUID, seed: int = 11) -> list[uuid.UUID]:
    """A year of 100,000 contacts: 1 + Poisson(2) sessions each over the channels, paid ones
    under their campaigns; a quarter become leads, then MQLs, opportunities and won deals; a
    daily cost for every campaign."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    contact_ids = [uuid.UUID(int=int(n) + 1) for n in range(CONTACTS)]
    visits: list[dict[str, Any]] = []
    conversions: list[dict[str, Any]] = []
    channels = np.array(CHANNELS)
    for contact_id in contact_ids:
        seconds = np.sort(rng.uniform(0, 365 * 86400, size=1 + rng.poisson(2)))
        times = [YEAR_START + timedelta(seconds=float(s)) for s in seconds]
        for at, channel in zip(times, rng.choice(channels, size=len(times)), strict=True):
            campaign = f"{channel}-{rng.integers(PAID[channel])}" if channel in PAID else None
            visits.append(
                {
                    "id": uuid.uuid4(),
                    "contact_id": contact_id,
                    "source_id": source_id,
                    "started_at": at,
                    "last_event_at": at,
                    "channel": str(channel),
                    "utm_campaign": campaign,
                    "page_views": 1,
                    "event_count": 1,
                }
            )
        if rng.random() < 0.25:
            lead_at = times[-1] + timedelta(minutes=5)
            conversions.append(_conversion(contact_id, "lead", 0, lead_at, ""))
            if rng.random() < 0.3:
                conversions.append(_conversion(contact_id, "mql", 0, lead_at, ""))
                if rng.random() < 0.3:
                    amount = int(rng.integers(10_000, 500_000)) * 100
                    conversions.append(_conversion(contact_id, "opportunity", amount, lead_at, "d"))
                    if rng.random() < 0.35:
                        conversions.append(_conversion(contact_id, "won", amount, lead_at, "d"))
    with session_scope() as session:
        _bulk(session, table_of(Contact), [{"id": c, "is_known": True} for c in contact_ids])
        _bulk(session, table_of(Visit), visits)
        _bulk(session, table_of(Conversion), conversions)
        lines = [
            CostLine(f"{channel}-{n}", channel, date(2025, 1, 1) + timedelta(days=d), cost)
            for channel, campaigns in PAID.items()
            for n in range(campaigns)
            for d, cost in enumerate(rng.integers(100_00, 5_000_00, size=365).tolist())
        ]
        import_costs(session, lines)
    print(
        f"  loaded {CONTACTS:,} contacts, {len(visits):,} sessions, "
        f"{len(conversions):,} conversions, {len(lines):,} cost lines "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return contact_ids


def _conversion(
    contact_id: uuid.UUID, kind: str, value: int, at: datetime, ref: str
) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "kind": kind,
        "value_fen": value,
        "occurred_at": at,
        "external_ref": ref,
        "recorded_at": at,
    }


def _bulk(session: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), ROWS_PER_INSERT):
        session.execute(insert(table), rows[start : start + ROWS_PER_INSERT])


NEW_CONVERSIONS_PER_BATCH = 200
BATCHES = 3
REPEATS = 5


def _time_reports(contact_ids: list[uuid.UUID]) -> None:
    """The worker credits the year in the background; then, per batch of new won deals, the
    first report right after they are stored (before any worker credits them) and the repeats
    once the worker has."""
    from api.app import create_app

    started, cpu = time.perf_counter(), time.process_time()
    credits.catch_up()
    print(
        f"  background: every standard run credited in {time.perf_counter() - started:.0f} s "
        f"({time.process_time() - cpu:.0f} s CPU in this process)"
    )
    with session_scope() as session:
        _, key = create_api_key(session, "bench finance", Role.finance)
    headers = {"Authorization": f"Bearer {key}"}
    params = {"start": "2025-01-01", "end": "2025-12-31"}
    rng = np.random.default_rng(5)
    with TestClient(create_app()) as client:

        def get(model: str) -> tuple[float, dict[str, Any]]:
            begun = time.perf_counter()
            response = client.get(
                "/api/v1/attribution/report", params={**params, "model": model}, headers=headers
            )
            seconds = time.perf_counter() - begun
            if response.status_code != 200:
                raise RuntimeError(f"report answered {response.status_code}: {response.text}")
            body = response.json()
            check = body["reconciliation"]
            if not all(
                check[g]["revenue_reconciles"] and check[g]["costs_reconcile"]
                for g in ("campaigns", "channels")
            ):
                raise RuntimeError(f"the {model} report does not reconcile: {check}")
            return seconds, body

        for model in ("linear", "markov"):
            get(model)  # warms the connection pool and the database's caches
            firsts, repeats, crediting = [], [], []
            for batch in range(BATCHES):
                new_ids = _new_won_deals(rng, contact_ids, f"{model}-{batch}")
                seconds, body = get(model)
                pending = body["freshness"]["channel"]["pending_conversions"]
                if pending != NEW_CONVERSIONS_PER_BATCH:
                    raise RuntimeError(f"expected the new deals pending, saw {pending}")
                firsts.append(seconds)
                begun = time.perf_counter()
                with session_scope() as session:
                    credits.credit_conversions(session, new_ids)
                crediting.append(time.perf_counter() - begun)
                for _ in range(REPEATS):
                    seconds, body = get(model)
                    repeats.append(seconds)
                if body["freshness"]["channel"]["pending_conversions"] != 0:
                    raise RuntimeError("the worker left conversions pending")
            first, repeat = statistics.median(firsts), statistics.median(repeats)
            print(
                f"  {model} report over a year: first request after "
                f"{NEW_CONVERSIONS_PER_BATCH} new deals (shown pending) median "
                f"{first * 1000:.0f} ms of {[round(f * 1000) for f in firsts]}; repeat median "
                f"{repeat * 1000:.0f} ms over {len(repeats)}; the worker credited each batch in "
                f"{statistics.median(crediting):.1f} s (median); reconciled"
            )
            record(f"attribution.roi_report_{model}_seconds", repeat, "s", target=at_most(1))
            record(
                f"attribution.roi_report_{model}_first_request_seconds",
                first,
                "s",
                target=at_most(1),
            )
    started = time.perf_counter()
    credits.refit_all()
    print(f"  background: Markov runs refitted in {time.perf_counter() - started:.0f} s")


def _new_won_deals(rng: np.random.Generator, contact_ids: list[uuid.UUID], tag: str) -> list[int]:
    """Stores a batch of won deals for random contacts late in the year, as handoff would."""
    chosen = rng.choice(len(contact_ids), size=NEW_CONVERSIONS_PER_BATCH, replace=False)
    with session_scope() as session:
        return [
            record_conversion(
                session,
                contact_ids[int(n)],
                "won",
                int(rng.integers(10_000, 500_000)) * 100,
                datetime(2025, 12, 20, tzinfo=UTC) + timedelta(minutes=int(n) % 10_000),
                f"late-{tag}-{n}",
            ).id
            for n in chosen
        ]


TRUTH_CONTACTS = 10_000
TRUTH_DAYS = 180


def _compare_with_truth() -> None:
    """Simulates a population, records its opportunities and wins, credits them in the
    background way, and prints each model's distance from the true channel effects."""
    from scoring.simulation import simulate

    started = time.perf_counter()
    summary = simulate(
        TRUTH_CONTACTS, TRUTH_DAYS, seed=2026, end=datetime(2026, 6, 1, tzinfo=UTC), progress=False
    )
    with session_scope() as session:
        truth.record_simulated_conversions(session, summary.run_id)
    credits.catch_up()
    with session_scope() as session:
        comparison = truth.compare_with_truth(session, summary.run_id)
    print(
        f"  simulated {TRUTH_CONTACTS:,} contacts over {TRUTH_DAYS} days "
        f"({comparison.opportunities} opportunities) and credited them in "
        f"{time.perf_counter() - started:.0f} s"
    )
    print("  true shares: " + ", ".join(f"{c} {s:.3f}" for c, s in comparison.true_shares.items()))
    for row in comparison.as_json()["models"]:
        print(f"  {row['model']:>16}: total absolute deviation {row['total_absolute_deviation']}")
        record(
            f"attribution.truth_deviation_{row['model']}", row["total_absolute_deviation"], "share"
        )
