"""Rows for PostgreSQL's COPY, formatted here in its text format (tab between columns,
newline after a row, \\N for null, backslash, tab, newline and carriage return escaped).

Ingest writes thousands of rows per batch; formatting a row as one string costs a fraction of
handing psycopg Python values to convert one by one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Table
from sqlalchemy.orm import Session

NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
ROWS_PER_WRITE = 1000


def text_value(value: str | None) -> str:
    if value is None:
        return NULL
    # Four substring tests are several times cheaper than one regular-expression search.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value


def json_value(value: Any) -> str:
    # orjson escapes every control character inside strings: only backslashes need doubling.
    return orjson.dumps(value).decode().replace("\\", "\\\\")


def copy_line(values: Iterable[Any]) -> str:
    """Values of the kinds rows hold (text, numbers, booleans, times, ids, JSON documents)
    as one line of COPY text."""
    return "\t".join([_FORMATS.get(type(value), json_value)(value) for value in values])


_FORMATS: dict[type, Callable[[Any], str]] = {
    type(None): lambda _: NULL,
    str: text_value,
    bool: lambda value: "t" if value else "f",
    int: str,
    float: str,
    datetime: datetime.isoformat,
    uuid.UUID: lambda value: value.hex,
}


def uuid_value(value: uuid.UUID | None) -> str:
    # PostgreSQL reads a uuid without hyphens too, and `.hex` is the cheap spelling.
    return NULL if value is None else value.hex


def time_value(value: datetime | None) -> str:
    return NULL if value is None else value.isoformat()


def default_values(table: Table, given: Sequence[str]) -> dict[str, str]:
    """The Python-side defaults of `table`'s columns outside `given`, as COPY text (COPY
    applies no Python-side defaults); a callable default is called once for all rows."""
    values: dict[str, str] = {}
    for column in table.c:
        if column.name in given or column.default is None:
            continue
        default = column.default
        value = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
        if isinstance(column.type, JSON):
            values[column.name] = json_value(value)
        elif isinstance(value, bool):
            values[column.name] = "t" if value else "f"
        else:
            values[column.name] = text_value(None if value is None else str(value))
    return values


def copy_lines(session: Session, table: str, columns: Sequence[str], lines: list[str]) -> None:
    """COPYs rows already formatted as lines (without their newline) into `table`."""
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for start in range(0, len(lines), ROWS_PER_WRITE):
            chunk = lines[start : start + ROWS_PER_WRITE]
            chunk.append("")  # the last line's newline
            copy.write("\n".join(chunk))
