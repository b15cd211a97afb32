"""Query results as JSON-safe values: what psycopg returns, turned into plain JSON data.

=====================================  ==================================================
Python value (PostgreSQL type)         JSON value
=====================================  ==================================================
None, bool, int, str                   unchanged
float (real, double precision)         unchanged if finite; "NaN", "Infinity", "-Infinity"
Decimal (numeric)                      string, exact, never in exponent form: "12.50"
datetime, date, time                   ISO 8601 string (``.isoformat()``)
timedelta (interval)                   ISO 8601 duration: "P1DT2H3M4.5S", "-PT1S", "PT0S"
UUID, ipaddress objects                string
bytes, memoryview (bytea)              standard base64 string
list, tuple (arrays, records)          list, converted element by element
dict (json, jsonb)                     dict with string keys, converted value by value
Range (range types)                    {"lower", "upper", "bounds", "empty"}
Multirange                             list of ranges as above
anything else (enums, money, xml...)   ``str(value)``
=====================================  ==================================================

Intervals: psycopg turns months into 30 days, so the duration has no Y or M (month) part.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

from psycopg.types.multirange import Multirange
from psycopg.types.range import Range


def to_json(value: Any) -> Any:
    """``value`` as data that ``json.dumps`` accepts and that round-trips without loss."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, Decimal):
        return format(value, "f")  # str() would write 0.0000001 as 1E-7
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple | Multirange):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, Range):
        return _range(value)
    # UUID, ipaddress objects, and types psycopg returns as text (enum, money, xml, macaddr...):
    # their str() is PostgreSQL's own text form.
    return str(value)


def iso_duration(value: dt.timedelta) -> str:
    """An ISO 8601 duration: ``P1DT2H3M4.5S``; negative ones get a leading ``-``."""
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    days = value.days
    minutes, seconds = divmod(value.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    date_part = f"{days}D" if days else ""
    time_part = "".join(
        f"{amount}{unit}" for amount, unit in ((hours, "H"), (minutes, "M")) if amount
    )
    if seconds or value.microseconds:
        fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
        time_part += f"{seconds}{fraction}S"
    if not date_part and not time_part:
        return "PT0S"
    return f"{sign}P{date_part}{'T' + time_part if time_part else ''}"


def shape_rows(rows: list[dict[str, Any]], max_bytes: int) -> tuple[list[dict[str, Any]], bool]:
    """The leading rows, JSON-safe, whose compact JSON fits in ``max_bytes`` together.

    Returns ``(rows, truncated)``; a first row larger than ``max_bytes`` gives ``([], True)``.
    """
    kept: list[dict[str, Any]] = []
    used = 0
    for row in rows:
        safe = {str(name): to_json(value) for name, value in row.items()}
        used += len(json.dumps(safe, separators=(",", ":")).encode())
        if used > max_bytes:
            return kept, True
        kept.append(safe)
    return kept, False


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _range(value: Range[Any]) -> dict[str, Any]:
    return {
        "lower": to_json(value.lower),
        "upper": to_json(value.upper),
        "bounds": value.bounds,
        "empty": value.isempty,
    }


__all__ = ["iso_duration", "shape_rows", "to_json"]
