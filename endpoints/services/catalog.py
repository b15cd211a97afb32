"""Schema introspection of a managed cluster: schemas, tables, columns, keys, indexes.

Every query reads ``pg_catalog`` through :func:`endpoints.routing.execute` in a
READ ONLY transaction that is always rolled back, so it may run on a replica, as the
role of ``purpose`` (the cluster's assistant role unless the caller names another).
Names are passed as query parameters, never formatted into SQL. Results are typed
(:class:`SchemaList`, :class:`TableList`, :class:`TableDescription`,
:class:`SchemaOverview`), their values JSON-safe.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from endpoints import routing
from endpoints.core.purposes import ASSISTANT_READ, Purpose
from endpoints.core.vocabulary import Intent
from endpoints.services.results import Answer, Result, json_name

# relkind -> what callers see. Indexes, sequences, composite and TOAST types are left out.
KINDS = {
    "r": "table",
    "v": "view",
    "m": "materialized view",
    "p": "partitioned table",
    "f": "foreign table",
}
# pg_constraint.confdeltype / confupdtype
FK_ACTIONS = {
    "a": "no action",
    "r": "restrict",
    "c": "cascade",
    "n": "set null",
    "d": "set default",
}
# schema_overview() is one result: bound it so a database with thousands of tables
# cannot produce an unbounded answer.
MAX_OVERVIEW_TABLES = 2000


class CatalogError(ValueError):
    """A catalog lookup the caller can fix: an unknown or ambiguous name."""


class NotFound(CatalogError):
    """No schema or table of that name."""


class Ambiguous(CatalogError):
    """A table name without a schema matches tables in several schemas."""


class SchemaInfo(Result):
    """A non-system schema: its owner and how many tables and views it holds."""

    name: str
    owner: str
    tables: int


class SchemaList(Answer):
    schemas: list[SchemaInfo]


class TableSummary(Result):
    """A table, view or materialized view."""

    schema_: str = json_name("schema")
    name: str
    kind: str = Field(description="table, view, materialized view, partitioned or foreign table")
    estimated_rows: int | None = Field(description="The planner's estimate; none for a view.")
    comment: str | None


class TableList(Answer):
    tables: list[TableSummary]


class TableColumn(Result):
    name: str
    type: str
    nullable: bool
    default: str | None
    comment: str | None


class Reference(Result):
    """The columns a foreign key references."""

    schema_: str = json_name("schema")
    table: str
    columns: list[str]


class ForeignKey(Result):
    name: str
    columns: list[str]
    references: Reference
    on_delete: str
    on_update: str


class Index(Result):
    name: str
    definition: str
    unique: bool
    primary: bool


class TableDescription(Answer):
    """A table's columns (in order), primary key, foreign keys and indexes."""

    schema_: str = json_name("schema")
    name: str
    kind: str
    estimated_rows: int | None
    comment: str | None
    columns: list[TableColumn]
    primary_key: list[str]
    foreign_keys: list[ForeignKey]
    indexes: list[Index]


class ColumnType(Result):
    name: str
    type: str


class OverviewTable(Result):
    schema_: str = json_name("schema")
    name: str
    kind: str
    columns: list[ColumnType]


class SchemaOverview(Answer):
    """Every user table and view with its columns' names and types."""

    cluster: str
    tables: list[OverviewTable]
    truncated: bool = Field(description=f"More than {MAX_OVERVIEW_TABLES} tables: some left out.")


def _read(
    cluster: str,
    query: str,
    params: dict[str, Any] | None = None,
    *,
    purpose: Purpose,
    **kwargs: Any,
) -> routing.QueryResult:
    return routing.execute(
        cluster, query, params or {}, intent=Intent.READ, read_only=True, purpose=purpose, **kwargs
    )


def _name(value: Any, argument: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{argument} is empty")
    return value


def _estimated_rows(kind: str, reltuples: float | None) -> int | None:
    # -1: never vacuumed or analyzed (PostgreSQL 14+). A view stores no rows.
    if reltuples is None or reltuples < 0 or kind == "v":
        return None
    return int(reltuples)


# Schemas

# The queries spell out the relkinds of KINDS, and leave out the system schemas unless
# one is named: pg_catalog, information_schema, pg_toast* (pg_toast_temp_* too) and
# pg_temp_* (other sessions' temporary schemas). Plain literals: nothing is formatted in.
_SCHEMAS_SQL = """
SELECT n.nspname AS name,
       pg_get_userbyid(n.nspowner) AS owner,
       count(c.oid)::int AS tables
FROM pg_namespace n
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
GROUP BY n.oid, n.nspname, n.nspowner
ORDER BY n.nspname
"""


def list_schemas(cluster: str, *, purpose: Purpose = ASSISTANT_READ) -> SchemaList:
    """Every non-system schema, by name, with its owner and table count."""
    rows = _read(cluster, _SCHEMAS_SQL, purpose=purpose).rows
    return SchemaList(schemas=[SchemaInfo.model_validate(row) for row in rows])


def _unknown_schema(cluster: str, schema: str, purpose: Purpose) -> NotFound:
    schemas = list_schemas(cluster, purpose=purpose).schemas
    known = ", ".join(s.name for s in schemas) or "none"
    return NotFound(f"cluster {cluster!r} has no schema {schema!r} (schemas: {known})")


# Tables

_TABLES_SQL = """
SELECT n.nspname AS schema,
       c.relname AS name,
       c.relkind::text AS kind,
       c.reltuples::float8 AS reltuples,
       obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND (n.nspname = %(schema)s::text
       OR (%(schema)s::text IS NULL
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname !~ '^pg_(toast|temp_)'))
ORDER BY n.nspname, c.relname
"""

_SCHEMA_EXISTS_SQL = "SELECT 1 AS found FROM pg_namespace WHERE nspname = %(schema)s::text"


def _table_summary(row: dict[str, Any]) -> dict[str, Any]:
    """The fields a table's summary and description share, from a catalog row."""
    return {
        "schema": row["schema"],
        "name": row["name"],
        "kind": KINDS[row["kind"]],
        "estimated_rows": _estimated_rows(row["kind"], row["reltuples"]),
        "comment": row["comment"],
    }


def list_tables(
    cluster: str, schema: str | None = None, *, purpose: Purpose = ASSISTANT_READ
) -> TableList:
    """Tables, views, materialized views, partitioned and foreign tables, by schema and name.

    ``estimated_rows`` is the planner's estimate (``reltuples``), ``None`` for views and
    tables never analyzed.
    ``schema=None`` lists every non-system schema (a system schema can be named); an
    unknown schema raises :class:`NotFound`.
    """
    if schema is not None:
        _name(schema, "schema")
    rows = _read(cluster, _TABLES_SQL, {"schema": schema}, purpose=purpose).rows
    # An empty answer for a named schema: empty, or missing? Only then ask which.
    if (
        not rows
        and schema is not None
        and not _read(cluster, _SCHEMA_EXISTS_SQL, {"schema": schema}, purpose=purpose).rows
    ):
        raise _unknown_schema(cluster, schema, purpose)
    return TableList(tables=[TableSummary.model_validate(_table_summary(row)) for row in rows])


# One table, described in one round trip: correlated subqueries turn columns, keys and
# indexes into JSON arrays on the table's row (psycopg loads them as lists of dicts).
# Key columns are listed in key order (unnest ... WITH ORDINALITY over conkey/confkey).
_DESCRIBE_SQL = """
SELECT n.nspname AS schema,
       c.relname AS name,
       c.relkind::text AS kind,
       c.reltuples::float8 AS reltuples,
       obj_description(c.oid, 'pg_class') AS comment,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', a.attname,
                   'type', format_type(a.atttypid, a.atttypmod),
                   'nullable', NOT a.attnotnull,
                   'default', CASE
                       WHEN a.attidentity = 'a' THEN 'generated always as identity'
                       WHEN a.attidentity = 'd' THEN 'generated by default as identity'
                       WHEN a.attgenerated = 's' THEN
                           'generated always as (' || pg_get_expr(d.adbin, d.adrelid) || ') stored'
                       ELSE pg_get_expr(d.adbin, d.adrelid)
                   END,
                   'comment', col_description(a.attrelid, a.attnum)
               ) ORDER BY a.attnum), '[]'::json)
          FROM pg_attribute a
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
       (SELECT coalesce(json_agg(a.attname ORDER BY k.ord), '[]'::json)
          FROM pg_constraint con
         CROSS JOIN unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
         WHERE con.conrelid = c.oid AND con.contype = 'p') AS primary_key,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', con.conname,
                   'columns', (SELECT json_agg(a.attname ORDER BY k.ord)
                                 FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                                 JOIN pg_attribute a
                                   ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
                   'references', json_build_object(
                       'schema', rn.nspname,
                       'table', rc.relname,
                       'columns', (SELECT json_agg(a.attname ORDER BY k.ord)
                                     FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                                     JOIN pg_attribute a
                                       ON a.attrelid = con.confrelid AND a.attnum = k.attnum)
                   ),
                   'on_delete', con.confdeltype::text,
                   'on_update', con.confupdtype::text
               ) ORDER BY con.conname), '[]'::json)
          FROM pg_constraint con
          JOIN pg_class rc ON rc.oid = con.confrelid
          JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE con.conrelid = c.oid AND con.contype = 'f') AS foreign_keys,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', ic.relname,
                   'definition', pg_get_indexdef(i.indexrelid),
                   'unique', i.indisunique,
                   'primary', i.indisprimary
               ) ORDER BY ic.relname), '[]'::json)
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = c.oid) AS indexes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND c.relname = %(table)s::text
  AND (n.nspname = %(schema)s::text
       OR (%(schema)s::text IS NULL
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname !~ '^pg_(toast|temp_)'))
ORDER BY n.nspname
"""


def _split(table: str, schema: str | None) -> tuple[str, str | None]:
    """``"schema.table"`` when no schema is given; a given schema takes the name literally."""
    if schema is None and "." in table:
        schema, table = table.split(".", 1)
        _name(schema, "schema")
        _name(table, "table")
    return table, schema


def _description(row: dict[str, Any]) -> TableDescription:
    foreign_keys = [
        {
            **fk,
            "on_delete": FK_ACTIONS.get(fk["on_delete"], fk["on_delete"]),
            "on_update": FK_ACTIONS.get(fk["on_update"], fk["on_update"]),
        }
        for fk in row["foreign_keys"]
    ]
    return TableDescription.model_validate(
        {
            **_table_summary(row),
            "columns": row["columns"],
            "primary_key": row["primary_key"] or [],
            "foreign_keys": foreign_keys,
            "indexes": row["indexes"],
        }
    )


def describe_table(
    cluster: str, table: str, schema: str | None = None, *, purpose: Purpose = ASSISTANT_READ
) -> TableDescription:
    """A table's columns (in order), primary key, foreign keys and indexes.

    ``table`` may be ``"schema.table"``. Without a schema, every non-system schema is
    searched: no match raises :class:`NotFound`, several raise :class:`Ambiguous`.
    """
    _name(table, "table")
    if schema is not None:
        _name(schema, "schema")
    name, schema = _split(table, schema)
    rows = _read(cluster, _DESCRIBE_SQL, {"table": name, "schema": schema}, purpose=purpose).rows
    if not rows:
        if (
            schema is not None
            and not _read(cluster, _SCHEMA_EXISTS_SQL, {"schema": schema}, purpose=purpose).rows
        ):
            raise _unknown_schema(cluster, schema, purpose)
        where = f"schema {schema!r}" if schema is not None else "any non-system schema"
        raise NotFound(f"cluster {cluster!r} has no table or view {name!r} in {where}")
    if len(rows) > 1:
        schemas = ", ".join(row["schema"] for row in rows)
        raise Ambiguous(
            f"{name!r} is ambiguous in cluster {cluster!r}: it exists in schemas {schemas}; "
            f"name one, e.g. {rows[0]['schema']}.{name}"
        )
    return _description(rows[0])


# Everything at once

_OVERVIEW_SQL = """
SELECT n.nspname AS schema,
       c.relname AS name,
       c.relkind::text AS kind,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', a.attname,
                   'type', format_type(a.atttypid, a.atttypmod)
               ) ORDER BY a.attnum), '[]'::json)
          FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
ORDER BY n.nspname, c.relname
"""


def schema_overview(cluster: str, *, purpose: Purpose = ASSISTANT_READ) -> SchemaOverview:
    """Every table of the non-system schemas with its columns' names and types, one query.

    At most :data:`MAX_OVERVIEW_TABLES` tables (``truncated`` says so).
    """
    result = _read(cluster, _OVERVIEW_SQL, max_rows=MAX_OVERVIEW_TABLES, purpose=purpose)
    tables = [
        OverviewTable.model_validate({**row, "kind": KINDS[row["kind"]]}) for row in result.rows
    ]
    return SchemaOverview(cluster=cluster, tables=tables, truncated=result.truncated)
