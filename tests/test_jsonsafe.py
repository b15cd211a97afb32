"""endpoints.core.jsonsafe: values as JSON, alone and as the real server returns them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.multirange import Multirange
from psycopg.types.range import Range

from endpoints import routing
from endpoints.core.jsonsafe import iso_duration, shape_rows, to_json
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.services import queries


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (-7, -7),
        (2**70, 2**70),
        ("héllo", "héllo"),
        (1.5, 1.5),
        (-0.0, -0.0),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (Decimal("12.50"), "12.50"),
        (Decimal("0.0000001"), "0.0000001"),
        (Decimal("12345678901234567890.123"), "12345678901234567890.123"),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "-Infinity"),
        (dt.date(2024, 2, 29), "2024-02-29"),
        (dt.datetime(2024, 2, 29, 13, 45, 6, 500000), "2024-02-29T13:45:06.500000"),
        (
            dt.datetime(2024, 2, 29, 13, 45, 6, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "2024-02-29T13:45:06-05:00",
        ),
        (dt.time(13, 45, 6, 789000), "13:45:06.789000"),
        (dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5), "P1DT2H3M4.5S"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        (b"\x00\xff\x10", "AP8Q"),
        (bytearray(b"ab"), "YWI="),
        (memoryview(b"ab"), "YWI="),
        ([1, [2, None], (3, float("nan"))], [1, [2, None], [3, "NaN"]]),
        ({"a": {"b": [Decimal("1.0")]}, 2: "two"}, {"a": {"b": ["1.0"]}, "2": "two"}),
        (Range(1, 10, "[)"), {"lower": 1, "upper": 10, "bounds": "[)", "empty": False}),
        (
            Range(None, dt.date(2024, 1, 1), "(]"),
            {"lower": None, "upper": "2024-01-01", "bounds": "(]", "empty": False},
        ),
        (Range(empty=True), {"lower": None, "upper": None, "bounds": "", "empty": True}),
        (
            Multirange([Range(1, 2), Range(5, 6)]),
            [
                {"lower": 1, "upper": 2, "bounds": "[)", "empty": False},
                {"lower": 5, "upper": 6, "bounds": "[)", "empty": False},
            ],
        ),
        (ipaddress.ip_interface("10.0.0.1/24"), "10.0.0.1/24"),
        (ipaddress.ip_network("2001:db8::/32"), "2001:db8::/32"),
        (Opaque(), "opaque!"),
    ],
)
def test_to_json(value: Any, expected: Any) -> None:
    converted = to_json(value)
    assert converted == expected
    assert type(converted) is type(expected)
    json.dumps(converted, allow_nan=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.timedelta(0), "PT0S"),
        (dt.timedelta(days=3), "P3D"),
        (dt.timedelta(hours=1), "PT1H"),
        (dt.timedelta(minutes=90), "PT1H30M"),
        (dt.timedelta(microseconds=1), "PT0.000001S"),
        (dt.timedelta(days=1, seconds=1), "P1DT1S"),
        (dt.timedelta(seconds=-1), "-PT1S"),
        (dt.timedelta(days=-1, hours=-2, microseconds=-500000), "-P1DT2H0.5S"),
    ],
)
def test_iso_duration(value: dt.timedelta, expected: str) -> None:
    assert iso_duration(value) == expected


def test_shape_rows_keeps_rows_while_their_compact_json_fits() -> None:
    rows = [{"n": i, "x": "y" * 10} for i in range(10)]
    one = len(json.dumps({"n": 0, "x": "y" * 10}, separators=(",", ":")).encode())
    kept, truncated = shape_rows(rows, one * 3)
    assert (len(kept), truncated) == (3, True)
    assert kept == rows[:3]
    assert shape_rows(rows, one * 10) == (rows, False)
    assert shape_rows(rows, one - 1) == ([], True)
    assert shape_rows([], 1) == ([], False)


def test_shape_rows_converts_values_and_measures_json_as_json_dumps_writes_it() -> None:
    rows: list[dict[str, Any]] = [
        {"v": float("nan"), "d": Decimal("1.10")},
        {"v": "é" * 4, "d": None},
    ]
    converted = [{"v": "NaN", "d": "1.10"}, {"v": "éééé", "d": None}]
    assert shape_rows(rows, 1000) == (converted, False)
    first = len(b'{"v":"NaN","d":"1.10"}')
    # json.dumps escapes non-ASCII characters: each é counts as the 6 bytes of \u00e9.
    second = len(b'{"v":"\\u00e9\\u00e9\\u00e9\\u00e9","d":null}')
    assert second == 41
    assert shape_rows(rows, first + second - 1) == (converted[:1], True)
    assert shape_rows(rows, first + second) == (converted, False)


# Against the real server

COLUMNS = """
    id int PRIMARY KEY,
    small smallint, regular integer, big bigint, price numeric(10,2), huge numeric,
    single real, double double precision, flag boolean, body text, label varchar(10),
    code char(3), raw bytea, day date, clock time, clock_tz timetz, moment timestamp,
    moment_tz timestamptz, span interval, ident uuid, doc json, docb jsonb, ints int[],
    words text[], grid int[], addr inet, net cidr, mac macaddr, span_ints int4range,
    cash money, markup xml, mood jsonsafe_mood
"""

FULL_ROW = """
    1, 32767, -2147483648, 9223372036854775807, 12.50, 12345678901234567890.123,
    1.5, 0.1, true, E'h\\u00e9llo "quoted"\\n', 'abc', 'ab', '\\x00ff10', '2024-02-29',
    '13:45:06.789', '13:45:06+02', '2024-02-29 13:45:06.5', '2024-02-29 13:45:06+00',
    '1 mon 1 day 2 hours 3 minutes 4.5 seconds', '12345678-1234-5678-1234-567812345678',
    '{"a": [1, 2.5, null], "b": "x"}', '{"a": {"b": [1, {"c": true}]}, "n": 1e2}',
    '{1,2,NULL}', '{"a","b c",NULL}', '{{1,2},{3,4}}', '192.168.0.1/24', '10.0.0.0/8',
    '08:00:2b:01:02:03', '[1,10)', 12.50, '<a>1</a>', 'happy'
"""

EXPECTED = {
    "id": 1,
    "small": 32767,
    "regular": -2147483648,
    "big": 9223372036854775807,
    "price": "12.50",
    "huge": "12345678901234567890.123",
    "single": 1.5,
    "double": 0.1,
    "flag": True,
    "body": 'héllo "quoted"\n',
    "label": "abc",
    "code": "ab ",
    "raw": "AP8Q",
    "day": "2024-02-29",
    "clock": "13:45:06.789000",
    "clock_tz": "13:45:06+02:00",
    "moment": "2024-02-29T13:45:06.500000",
    "span": "P31DT2H3M4.5S",  # psycopg counts a month as 30 days
    "ident": "12345678-1234-5678-1234-567812345678",
    "doc": {"a": [1, 2.5, None], "b": "x"},
    "docb": {"a": {"b": [1, {"c": True}]}, "n": 100},
    "ints": [1, 2, None],
    "words": ["a", "b c", None],
    "grid": [[1, 2], [3, 4]],
    "addr": "192.168.0.1/24",
    "net": "10.0.0.0/8",
    "mac": "08:00:2b:01:02:03",
    "span_ints": {"lower": 1, "upper": 10, "bounds": "[)", "empty": False},
    "cash": "$12.50",
    "markup": "<a>1</a>",
    "mood": "happy",
}

# The type names routing reports (pg_type.typname for built-ins).
EXPECTED_TYPES = {
    "id": "int4",
    "small": "int2",
    "regular": "int4",
    "big": "int8",
    "price": "numeric",
    "huge": "numeric",
    "single": "float4",
    "double": "float8",
    "flag": "bool",
    "body": "text",
    "label": "varchar",
    "code": "bpchar",
    "raw": "bytea",
    "day": "date",
    "clock": "time",
    "clock_tz": "timetz",
    "moment": "timestamp",
    "moment_tz": "timestamptz",
    "span": "interval",
    "ident": "uuid",
    "doc": "json",
    "docb": "jsonb",
    "addr": "inet",
    "net": "cidr",
    "mac": "macaddr",
    "span_ints": "int4range",
    "cash": "money",
    "markup": "xml",
}


@pytest.fixture
def typed_table(
    redis_server: Any, local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> Iterator[None]:
    routing.reset_router()
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS jsonsafe_types; DROP TYPE IF EXISTS jsonsafe_mood")
        conn.execute("CREATE TYPE jsonsafe_mood AS ENUM ('happy', 'sad')")
        conn.execute(f"CREATE TABLE jsonsafe_types ({COLUMNS})")
        conn.execute(f"INSERT INTO jsonsafe_types VALUES ({FULL_ROW})")  # noqa: S608 (constants)
        conn.execute("INSERT INTO jsonsafe_types (id) VALUES (2)")  # NULL in every other column
        conn.execute(
            "INSERT INTO jsonsafe_types (id, double, huge, span_ints) VALUES "
            "(3, 'NaN', 'NaN', 'empty'), (4, 'Infinity', 'Infinity', '(,5]'), "
            "(5, '-Infinity', '-Infinity', NULL)"
        )
    pg_cluster.wait_for_replay()
    yield
    routing.reset_router()


def read_types(sql: str) -> dict[str, Any]:
    result = queries.read_query("local", sql).as_json()  # what callers see
    json.dumps(result, allow_nan=False)  # everything is plain JSON
    return result


@pytest.mark.django_db(transaction=True)
def test_every_common_type_reads_back_as_exact_json(typed_table: None) -> None:
    result = read_types("SELECT * FROM jsonsafe_types ORDER BY id")
    rows = result["rows"]
    # In the session's time zone, whichever that is.
    moment_tz = dt.datetime.fromisoformat(rows[0].pop("moment_tz"))
    assert moment_tz == dt.datetime(2024, 2, 29, 13, 45, 6, tzinfo=dt.UTC)
    assert moment_tz.utcoffset() is not None
    assert rows[0] == EXPECTED
    assert rows[1] == {name: (2 if name == "id" else None) for name in [*EXPECTED, "moment_tz"]}
    special = [(row["double"], row["huge"], row["span_ints"]) for row in rows[2:]]
    assert special == [
        ("NaN", "NaN", {"lower": None, "upper": None, "bounds": "", "empty": True}),
        ("Infinity", "Infinity", {"lower": None, "upper": 6, "bounds": "()", "empty": False}),
        ("-Infinity", "-Infinity", None),
    ]
    types = {column["name"]: column["type"] for column in result["columns"]}
    assert set(types) == {*EXPECTED, "moment_tz"}
    assert types["moment_tz"] == "timestamptz"
    assert {name: types[name] for name in EXPECTED_TYPES} == EXPECTED_TYPES
    # The same through a replica.
    replica = queries.read_query(
        "local", "SELECT * FROM jsonsafe_types WHERE id = 1", read_preference="secondary"
    )
    assert replica.role == "replica"
    assert replica.rows[0] == {**EXPECTED, "moment_tz": replica.rows[0]["moment_tz"]}


@pytest.mark.django_db(transaction=True)
def test_expressions_ranges_records_and_big_json_numbers(typed_table: None) -> None:
    result = read_types(
        "SELECT '[2024-01-01,2024-02-01)'::daterange AS days,"
        " '{[1,2),[5,6)}'::int4multirange AS multi, ROW(1, 'x') AS rec,"
        " '1e-7'::numeric AS tiny, '-1 second'::interval AS back, point(1, 2) AS pt,"
        " '1e40'::jsonb AS big, 'a & b'::tsvector AS words"
    )
    assert result["rows"] == [
        {
            "days": {"lower": "2024-01-01", "upper": "2024-02-01", "bounds": "[)", "empty": False},
            "multi": [
                {"lower": 1, "upper": 2, "bounds": "[)", "empty": False},
                {"lower": 5, "upper": 6, "bounds": "[)", "empty": False},
            ],
            "rec": ["1", "x"],
            "tiny": "0.0000001",
            "back": "-PT1S",
            "pt": "(1,2)",
            # jsonb writes numbers without an exponent, so this one is an integer.
            "big": 10**40,
            "words": "'&' 'a' 'b'",
        }
    ]


@pytest.mark.django_db(transaction=True)
def test_array_and_user_type_columns_are_named_by_their_type(typed_table: None) -> None:
    result = read_types("SELECT ints, words, mood FROM jsonsafe_types WHERE id = 1")
    ints, words, mood = (column["type"] for column in result["columns"])
    assert ints == "int4[]"
    assert words == "text[]"
    assert mood == "jsonsafe_mood"
