"""endpoints.services.catalog against the real local cluster, through the router."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from endpoints import routing
from endpoints.core.purposes import ASSISTANT_READ
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.routing import topology
from endpoints.services import catalog

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_router")]

# Names no other test module uses: the PostgreSQL cluster is shared by the whole session.
SHOP, OTHER = "catalog_shop", "catalog_other"

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS catalog_shop CASCADE;
DROP SCHEMA IF EXISTS catalog_other CASCADE;
CREATE SCHEMA catalog_shop;
CREATE TABLE catalog_shop.catalog_customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    name varchar(100),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE catalog_shop.catalog_customers IS 'People who buy';
COMMENT ON COLUMN catalog_shop.catalog_customers.email IS 'Login address';
CREATE UNIQUE INDEX catalog_customers_email_key ON catalog_shop.catalog_customers (lower(email));
CREATE TABLE catalog_shop.catalog_orders (
    customer_id bigint NOT NULL,
    number integer NOT NULL,
    total numeric(10, 2) NOT NULL DEFAULT 0,
    status text NOT NULL DEFAULT 'new',
    PRIMARY KEY (customer_id, number),
    CONSTRAINT catalog_orders_customer_fk FOREIGN KEY (customer_id)
        REFERENCES catalog_shop.catalog_customers (id) ON DELETE CASCADE
);
CREATE VIEW catalog_shop.catalog_big_orders AS
    SELECT customer_id, number, total FROM catalog_shop.catalog_orders WHERE total > 100;
COMMENT ON VIEW catalog_shop.catalog_big_orders IS 'Orders over 100';
CREATE MATERIALIZED VIEW catalog_shop.catalog_order_totals AS
    SELECT customer_id, sum(total) AS total FROM catalog_shop.catalog_orders GROUP BY customer_id;
CREATE TABLE catalog_shop.catalog_events (at timestamptz NOT NULL) PARTITION BY RANGE (at);
INSERT INTO catalog_shop.catalog_customers (email, name)
    VALUES ('a@example.com', 'A'), ('b@example.com', 'B'), ('c@example.com', NULL);
ANALYZE catalog_shop.catalog_customers;
CREATE SCHEMA catalog_other;
CREATE TABLE catalog_other.catalog_orders (id integer);
"""

CUSTOMERS: dict[str, Any] = {
    "schema": SHOP,
    "name": "catalog_customers",
    "kind": "table",
    "estimated_rows": 3,
    "comment": "People who buy",
    "columns": [
        {
            "name": "id",
            "type": "bigint",
            "nullable": False,
            "default": "generated always as identity",
            "comment": None,
        },
        {
            "name": "email",
            "type": "text",
            "nullable": False,
            "default": None,
            "comment": "Login address",
        },
        {
            "name": "name",
            "type": "character varying(100)",
            "nullable": True,
            "default": None,
            "comment": None,
        },
        {
            "name": "created_at",
            "type": "timestamp with time zone",
            "nullable": False,
            "default": "now()",
            "comment": None,
        },
    ],
    "primary_key": ["id"],
    "foreign_keys": [],
    "indexes": [
        {
            "name": "catalog_customers_email_key",
            "definition": "CREATE UNIQUE INDEX catalog_customers_email_key "
            f"ON {SHOP}.catalog_customers USING btree (lower(email))",
            "unique": True,
            "primary": False,
        },
        {
            "name": "catalog_customers_pkey",
            "definition": "CREATE UNIQUE INDEX catalog_customers_pkey "
            f"ON {SHOP}.catalog_customers USING btree (id)",
            "unique": True,
            "primary": True,
        },
    ],
}

ORDERS: dict[str, Any] = {
    "schema": SHOP,
    "name": "catalog_orders",
    "kind": "table",
    "estimated_rows": None,  # never analyzed
    "comment": None,
    "columns": [
        {
            "name": "customer_id",
            "type": "bigint",
            "nullable": False,
            "default": None,
            "comment": None,
        },
        {"name": "number", "type": "integer", "nullable": False, "default": None, "comment": None},
        {
            "name": "total",
            "type": "numeric(10,2)",
            "nullable": False,
            "default": "0",
            "comment": None,
        },
        {
            "name": "status",
            "type": "text",
            "nullable": False,
            "default": "'new'::text",
            "comment": None,
        },
    ],
    "primary_key": ["customer_id", "number"],
    "foreign_keys": [
        {
            "name": "catalog_orders_customer_fk",
            "columns": ["customer_id"],
            "references": {"schema": SHOP, "table": "catalog_customers", "columns": ["id"]},
            "on_delete": "cascade",
            "on_update": "no action",
        }
    ],
    "indexes": [
        {
            "name": "catalog_orders_pkey",
            "definition": "CREATE UNIQUE INDEX catalog_orders_pkey "
            f"ON {SHOP}.catalog_orders USING btree (customer_id, number)",
            "unique": True,
            "primary": True,
        }
    ],
}

SHOP_TABLES = [
    {
        "schema": SHOP,
        "name": "catalog_big_orders",
        "kind": "view",
        "estimated_rows": None,
        "comment": "Orders over 100",
    },
    {
        "schema": SHOP,
        "name": "catalog_customers",
        "kind": "table",
        "estimated_rows": 3,
        "comment": "People who buy",
    },
    {
        "schema": SHOP,
        "name": "catalog_events",
        "kind": "partitioned table",
        "estimated_rows": None,
        "comment": None,
    },
    {
        "schema": SHOP,
        "name": "catalog_order_totals",
        "kind": "materialized view",
        "estimated_rows": None,
        "comment": None,
    },
    {
        "schema": SHOP,
        "name": "catalog_orders",
        "kind": "table",
        "estimated_rows": None,
        "comment": None,
    },
]
OTHER_TABLES = [
    {
        "schema": OTHER,
        "name": "catalog_orders",
        "kind": "table",
        "estimated_rows": None,
        "comment": None,
    }
]


@pytest.fixture(scope="module")
def shop_schema(pg_cluster: LocalPostgresCluster) -> Iterator[None]:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    pg_cluster.wait_for_replay()
    yield
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP SCHEMA catalog_shop CASCADE; DROP SCHEMA catalog_other CASCADE")


@pytest.fixture
def cluster(local_cluster: Cluster, shop_schema: None) -> Cluster:
    return local_cluster


def requests_made() -> int:
    """Requests the assistant's router (the catalog's, by default) made to cluster local."""
    return int(routing.stats("local", purpose=ASSISTANT_READ).totals.requests)


# Schemas and tables


def test_list_schemas_counts_tables_and_leaves_out_system_schemas(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    schemas = catalog.list_schemas("local").as_json()["schemas"]

    by_name = {schema["name"]: schema for schema in schemas}
    assert by_name[SHOP] == {"name": SHOP, "owner": pg_cluster.user, "tables": 5}
    assert by_name[OTHER] == {"name": OTHER, "owner": pg_cluster.user, "tables": 1}
    assert "public" in by_name
    names = [schema["name"] for schema in schemas]
    assert names == sorted(names)
    assert not [
        name
        for name in names
        if name in ("pg_catalog", "information_schema") or name.startswith("pg_")
    ]


def test_list_tables_of_one_schema_by_name_with_kinds_estimates_and_comments(
    cluster: Cluster,
) -> None:
    assert catalog.list_tables("local", SHOP).as_json()["tables"] == SHOP_TABLES
    assert catalog.list_tables("local", OTHER).as_json()["tables"] == OTHER_TABLES


def test_list_tables_without_a_schema_covers_every_user_schema_and_no_system_one(
    cluster: Cluster,
) -> None:
    tables = catalog.list_tables("local").as_json()["tables"]

    mine = [table for table in tables if table["schema"] in (SHOP, OTHER)]
    assert mine == OTHER_TABLES + SHOP_TABLES  # by schema, then name
    schemas = {table["schema"] for table in tables}
    assert not [s for s in schemas if s in ("pg_catalog", "information_schema", "pg_toast")]


def test_an_unknown_schema_is_not_found_and_the_known_ones_are_listed(cluster: Cluster) -> None:
    with pytest.raises(catalog.NotFound) as caught:
        catalog.list_tables("local", "no_such_schema").as_json()["tables"]

    message = str(caught.value)
    assert "'no_such_schema'" in message
    assert SHOP in message
    assert OTHER in message
    assert isinstance(caught.value, ValueError)


def test_an_empty_schema_lists_no_tables_rather_than_not_found(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS catalog_empty; CREATE SCHEMA catalog_empty")
    try:
        pg_cluster.wait_for_replay()
        assert catalog.list_tables("local", "catalog_empty").as_json()["tables"] == []
    finally:
        with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
            conn.execute("DROP SCHEMA catalog_empty")


# One table


def test_describe_table_gives_columns_keys_and_indexes_in_one_query(cluster: Cluster) -> None:
    before = requests_made()

    described = catalog.describe_table("local", "catalog_customers").as_json()

    assert described == CUSTOMERS
    assert requests_made() == before + 1


def test_describe_table_gives_a_composite_primary_key_in_key_order_and_foreign_keys(
    cluster: Cluster,
) -> None:
    assert catalog.describe_table("local", "catalog_orders", schema=SHOP).as_json() == ORDERS


def test_describe_table_takes_schema_dot_table(cluster: Cluster) -> None:
    assert catalog.describe_table("local", f"{SHOP}.catalog_orders").as_json() == ORDERS
    other = catalog.describe_table("local", f"{OTHER}.catalog_orders").as_json()
    assert other["schema"] == OTHER
    assert [column["name"] for column in other["columns"]] == ["id"]
    assert other["primary_key"] == []
    assert other["indexes"] == []


def test_describe_views_and_materialized_views(cluster: Cluster) -> None:
    view = catalog.describe_table("local", "catalog_big_orders").as_json()
    assert view["kind"] == "view"
    assert view["comment"] == "Orders over 100"
    assert view["estimated_rows"] is None
    assert [(c["name"], c["type"], c["nullable"]) for c in view["columns"]] == [
        ("customer_id", "bigint", True),
        ("number", "integer", True),
        ("total", "numeric(10,2)", True),
    ]
    assert (view["primary_key"], view["foreign_keys"], view["indexes"]) == ([], [], [])

    totals = catalog.describe_table("local", "catalog_order_totals", schema=SHOP).as_json()
    assert totals["kind"] == "materialized view"
    assert [(c["name"], c["type"]) for c in totals["columns"]] == [
        ("customer_id", "bigint"),
        ("total", "numeric"),
    ]


def test_a_table_name_in_several_schemas_is_ambiguous_and_names_them(cluster: Cluster) -> None:
    with pytest.raises(catalog.Ambiguous) as caught:
        catalog.describe_table("local", "catalog_orders").as_json()

    message = str(caught.value)
    assert "ambiguous" in message
    assert f"{OTHER}, {SHOP}" in message
    assert isinstance(caught.value, ValueError)


def test_unknown_tables_and_schemas_are_not_found(cluster: Cluster) -> None:
    with pytest.raises(catalog.NotFound, match="'no_such_table' in any non-system schema"):
        catalog.describe_table("local", "no_such_table").as_json()
    with pytest.raises(
        catalog.NotFound, match=f"no table or view 'catalog_customers' in schema '{OTHER}'"
    ):
        catalog.describe_table("local", "catalog_customers", schema=OTHER).as_json()
    with pytest.raises(catalog.NotFound, match="no schema 'nowhere'") as caught:
        catalog.describe_table("local", "nowhere.catalog_orders").as_json()
    assert SHOP in str(caught.value)
    # System catalogs are not searched without a schema, but can be named.
    with pytest.raises(catalog.NotFound):
        catalog.describe_table("local", "pg_class").as_json()
    pg_class = catalog.describe_table("local", "pg_catalog.pg_class").as_json()
    assert pg_class["columns"][0]["name"] == "oid"


def test_names_are_checked_before_any_query(cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="table is empty"):
        catalog.describe_table("local", " ").as_json()
    with pytest.raises(ValueError, match="schema is empty"):
        catalog.describe_table("local", ".catalog_orders").as_json()
    with pytest.raises(TypeError, match="schema must be a string"):
        catalog.list_tables("local", 42).as_json()["tables"]  # type: ignore[arg-type]


def test_an_unknown_cluster_is_the_routers_cluster_not_found(cluster: Cluster) -> None:
    with pytest.raises(routing.ClusterNotFound, match="local"):
        catalog.list_schemas("nope").as_json()["schemas"]


def test_catalog_reads_run_on_replicas_when_the_read_preference_says_so(
    cluster: Cluster,
) -> None:
    Cluster.objects.filter(pk=cluster.pk).update(read_preference="secondary")
    topology.notify_changed()

    assert catalog.describe_table("local", f"{SHOP}.catalog_orders").as_json() == ORDERS

    stats = routing.stats("local", purpose=ASSISTANT_READ).endpoints
    assert stats["primary"].requests == 0
    assert stats["replica1"].requests + stats["replica2"].requests == 1


# Everything at once


def test_schema_overview_lists_every_table_with_column_names_and_types_in_one_query(
    cluster: Cluster,
) -> None:
    before = requests_made()

    overview = catalog.schema_overview("local").as_json()

    assert requests_made() == before + 1
    assert overview["cluster"] == "local"
    assert overview["truncated"] is False
    mine = [t for t in overview["tables"] if t["schema"] in (SHOP, OTHER)]
    assert [(t["schema"], t["name"], t["kind"]) for t in mine] == [
        (OTHER, "catalog_orders", "table"),
        (SHOP, "catalog_big_orders", "view"),
        (SHOP, "catalog_customers", "table"),
        (SHOP, "catalog_events", "partitioned table"),
        (SHOP, "catalog_order_totals", "materialized view"),
        (SHOP, "catalog_orders", "table"),
    ]
    customers = next(t for t in mine if t["name"] == "catalog_customers")
    assert customers["columns"] == [
        {"name": c["name"], "type": c["type"]} for c in CUSTOMERS["columns"]
    ]
    assert not [t for t in overview["tables"] if t["schema"].startswith("pg_")]
