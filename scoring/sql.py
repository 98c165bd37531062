"""SQL expressions scoring needs on both PostgreSQL and SQLite: seconds since the epoch, the
decay factor, and a number read from JSON text that never fails on non-numeric input."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, SQLColumnExpression, func, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

SECONDS_PER_DAY = 86_400.0


class epoch_seconds(FunctionElement[float]):
    """Seconds since 1970-01-01 UTC of a timestamp column."""

    type = Float()
    inherit_cache = True


@compiles(epoch_seconds, "postgresql")
def _epoch_postgres(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    # date_part gives a double; EXTRACT gives a numeric (PostgreSQL 14 on), whose arithmetic is
    # several times slower over millions of events and which the driver decodes as Decimal.
    return f"date_part('epoch', {compiler.process(element.clauses, **kw)})"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    # julianday is a day count as a double: its last bits are ~10 µs of noise, which rounding to
    # the millisecond removes (a score stored now must read back exactly, not 49.99999 of 50).
    return f"round((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0, 3)"


class safe_number(FunctionElement[float]):
    """A text value as a number, or NULL when it is not one (a plain CAST would abort the query)."""

    type = Float()
    inherit_cache = True


@compiles(safe_number, "postgresql")
def _number_postgres(element: safe_number, compiler: Any, **kw: Any) -> str:
    value = compiler.process(element.clauses, **kw)
    return (
        f"(CASE WHEN ({value}) ~ '^\\s*-?[0-9]+(\\.[0-9]+)?\\s*$' "
        f"THEN CAST(({value}) AS DOUBLE PRECISION) END)"
    )


@compiles(safe_number, "sqlite")
def _number_sqlite(element: safe_number, compiler: Any, **kw: Any) -> str:
    value = compiler.process(element.clauses, **kw)
    return f"(CASE WHEN trim({value}) GLOB '*[0-9]*' THEN CAST(trim({value}) AS REAL) END)"


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def decay_factor(
    occurred_at: SQLColumnExpression[Any], at: datetime, half_life_days: float
) -> ColumnElement[float]:
    """0.5 ** (age / half-life): what one point earned at `occurred_at` is worth at `at`."""
    age_days = (literal(epoch(at)) - epoch_seconds(occurred_at)) / SECONDS_PER_DAY
    return func.power(0.5, age_days / half_life_days)


def local_day(moment: SQLColumnExpression[Any], utc_offset_seconds: float) -> ColumnElement[Any]:
    """The day number in the business time zone (Asia/Shanghai has no daylight saving, so a
    fixed offset is exact there)."""
    return func.floor((epoch_seconds(moment) + utc_offset_seconds) / SECONDS_PER_DAY)
