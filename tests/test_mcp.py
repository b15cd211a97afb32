"""``manage.py run_mcp`` over stdio, driven by the SDK's client against the real cluster.

Every test starts the server as a child process, exactly as a desktop MCP client
does, on the test database (``django_db(transaction=True)``: the child sees only
committed rows) and the shared local cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest

from endpoints.control import sweep
from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint
from tests.helpers import ROOT
from tests.helpers.mcp_client import Body, Mcp, command, run_body
from tests.helpers.processes import run_manage
from tests.test_jsonsafe import EXPECTED, typed_table  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

READ_TOOLS = {
    "query",
    "explain",
    "list_schemas",
    "list_tables",
    "describe_table",
    "database_info",
    "cluster_status",
    "health_history",
}
WRITE_TOOLS = {"execute", "transaction"}
ADMIN_TOOLS = {
    "check_health",
    "failover",
    "pause_failover",
    "resume_failover",
    "add_endpoint",
    "remove_endpoint",
    "set_endpoint",
}


def run(*flags: str, env: dict[str, str] | None = None) -> Callable[[Body], None]:
    """Run an async test body against a fresh ``run_mcp FLAGS`` child; nothing may leak."""
    return run_body(*flags, env=env, after=_assert_nothing_leaked)


SECRETS: list[str] = []


def _assert_nothing_leaked(mcp: Mcp) -> None:
    for call in mcp.calls:
        shown = call.text + json.dumps(call.data)
        assert "Traceback" not in shown, shown
        for secret in SECRETS:
            assert secret not in shown, f"a password reached the client: {call.text[:200]}"
    for secret in SECRETS:
        assert secret not in mcp.stderr


@pytest.fixture
def cluster(local_cluster: Cluster, pg_cluster: LocalPostgresCluster, redis_server: Any) -> Cluster:
    SECRETS[:] = [
        pg_cluster.password,
        pg_cluster.replication_password,
        pg_cluster.assistant_password,
        pg_cluster.assistant_write_password,
    ]
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS mcp_orders, mcp_customers CASCADE")
        conn.execute("DROP SEQUENCE IF EXISTS mcp_seq")
        conn.execute(
            "CREATE TABLE mcp_customers (id serial PRIMARY KEY, name text NOT NULL UNIQUE)"
        )
        conn.execute(
            "CREATE TABLE mcp_orders (id bigserial PRIMARY KEY, "
            "customer_id int NOT NULL REFERENCES mcp_customers(id) ON DELETE CASCADE, "
            "amount numeric(10, 2) NOT NULL DEFAULT 0, placed_at timestamptz DEFAULT now())"
        )
        conn.execute("CREATE SEQUENCE mcp_seq")
        conn.execute("INSERT INTO mcp_customers (name) VALUES ('ada'), ('grace')")
        conn.execute(
            "INSERT INTO mcp_orders (customer_id, amount, placed_at) "
            "VALUES (1, 12.50, '2026-01-02T03:04:05Z'), (2, 7, '2026-01-03T00:00:00Z')"
        )
        # The assistant's write role changes any table's rows (pg_write_all_data), but only
        # the tables it owns may it index or alter, as PostgreSQL has it.
        for relation in ("TABLE mcp_customers", "TABLE mcp_orders", "SEQUENCE mcp_seq"):
            conn.execute(f"ALTER {relation} OWNER TO {pg_cluster.assistant_write_user}")
    pg_cluster.wait_for_replay()
    return local_cluster


def checksum(pg_cluster: LocalPostgresCluster) -> str:
    """Everything the corpus could change: rows, the sequence, the tables, settings."""
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        parts = [
            conn.execute(
                "SELECT string_agg(c::text, ',' ORDER BY id) FROM mcp_customers c"
            ).fetchone(),
            conn.execute(
                "SELECT string_agg(o::text, ',' ORDER BY id) FROM mcp_orders o"
            ).fetchone(),
            conn.execute("SELECT last_value, is_called FROM mcp_seq").fetchone(),
            conn.execute(
                "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = 'public'"
            ).fetchone(),
            conn.execute(
                "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings "
                "WHERE source NOT IN ('default', 'override', 'session')"
            ).fetchone(),
            conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone(),
        ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# The tool list follows the flags


def test_tools_list_follows_the_flags(cluster: Cluster) -> None:
    seen: dict[str, set[str]] = {}

    for flags in ((), ("--allow-writes",), ("--allow-admin",), ("--allow-writes", "--allow-admin")):

        async def body(mcp: Mcp, flags: tuple[str, ...] = flags) -> None:
            seen[" ".join(flags)] = await mcp.tool_names()
            for tool in (await mcp.session.list_tools()).tools:
                properties = tool.input_schema.get("properties", {})
                for name, schema in properties.items():
                    assert schema.get("description"), f"{tool.name}.{name} has no description"
                assert tool.description

        run(*flags)(body)

    assert seen[""] == READ_TOOLS
    assert seen["--allow-writes"] == READ_TOOLS | WRITE_TOOLS
    assert seen["--allow-admin"] == READ_TOOLS | ADMIN_TOOLS
    assert seen["--allow-writes --allow-admin"] == READ_TOOLS | WRITE_TOOLS | ADMIN_TOOLS


def test_every_tool_publishes_an_output_schema_under_every_flag_combination(
    cluster: Cluster,
) -> None:
    schemas: dict[str, dict[str, Any]] = {}

    for flags in ((), ("--allow-writes",), ("--allow-admin",), ("--allow-writes", "--allow-admin")):

        async def body(mcp: Mcp, flags: tuple[str, ...] = flags) -> None:
            for tool in (await mcp.session.list_tools()).tools:
                schema = tool.output_schema
                assert schema, f"{tool.name} has no outputSchema (with {flags or 'no flags'})"
                assert schema.get("type") == "object", (tool.name, schema)
                # A typed result, not an open dict: its fields are named.
                assert schema.get("properties"), (tool.name, schema)
                schemas[tool.name] = schema

        run(*flags)(body)

    assert set(schemas) == READ_TOOLS | WRITE_TOOLS | ADMIN_TOOLS
    assert {"columns", "rows", "row_count", "truncated"} <= set(schemas["query"]["properties"])
    assert {"from", "to", "outcome"} <= set(schemas["failover"]["properties"])
    assert "warning" not in schemas["cluster_status"].get("required", [])


def test_the_settings_enable_the_same_tools_as_the_flags(cluster: Cluster) -> None:
    async def body(mcp: Mcp) -> None:
        assert await mcp.tool_names() == READ_TOOLS | WRITE_TOOLS | ADMIN_TOOLS

    run(env={"PGWARDEN_MCP_ALLOW_WRITES": "true", "PGWARDEN_MCP_ALLOW_ADMIN": "true"})(body)


# Read tools


def test_every_read_tool_answers_from_the_real_cluster(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    sweep(cluster)
    sweep(cluster)

    async def body(mcp: Mcp) -> None:
        result = await mcp.ok(
            "query",
            sql="SELECT id, name FROM mcp_customers WHERE id = %s",
            params=[2],
            read_preference="secondary",
        )
        assert result["rows"] == [{"id": 2, "name": "grace"}]
        assert result["columns"] == [
            {"name": "id", "type": "int4"},
            {"name": "name", "type": "text"},
        ]
        assert result["row_count"] == 1
        assert result["truncated"] is False
        assert result["role"] == "replica"
        assert result["endpoint"] in {"replica1", "replica2"}
        assert result["elapsed_ms"] > 0

        named = await mcp.ok(
            "query",
            sql="SELECT amount, placed_at FROM mcp_orders WHERE customer_id = %(c)s",
            params={"c": 1},
        )
        assert named["rows"] == [{"amount": "12.50", "placed_at": "2026-01-02T03:04:05+00:00"}]
        assert named["endpoint"] == "primary"  # the cluster's preference: primary_preferred

        plan = await mcp.ok("explain", sql="SELECT * FROM mcp_orders WHERE id = 1")
        assert "Plan" in json.dumps(plan["plan"])
        analyzed = await mcp.ok("explain", sql="SELECT count(*) FROM mcp_orders", analyze=True)
        assert "Actual Rows" in json.dumps(analyzed["plan"])

        schemas = await mcp.ok("list_schemas")
        assert "public" in {s["name"] for s in schemas["schemas"]}
        assert not {"pg_catalog", "information_schema"} & {s["name"] for s in schemas["schemas"]}

        tables = await mcp.ok("list_tables", schema="public")
        names = {t["name"]: t for t in tables["tables"]}
        assert names["mcp_orders"]["kind"] == "table"
        assert "mcp_customers" in names

        described = await mcp.ok("describe_table", table="mcp_orders")
        columns = {c["name"]: c for c in described["columns"]}
        assert list(columns) == ["id", "customer_id", "amount", "placed_at"]
        assert columns["amount"]["type"] == "numeric(10,2)"
        assert columns["amount"]["nullable"] is False
        assert columns["amount"]["default"] == "0"
        assert columns["placed_at"]["nullable"] is True
        assert described["primary_key"] == ["id"]
        [foreign_key] = described["foreign_keys"]
        assert foreign_key["columns"] == ["customer_id"]
        assert foreign_key["references"]["table"] == "mcp_customers"
        assert any(index["primary"] for index in described["indexes"])

        info = await mcp.ok("database_info")
        by_name = {e["name"]: e for e in info["endpoints"]}
        assert set(by_name) == {"primary", "replica1", "replica2"}
        assert by_name["primary"]["server_version"].startswith("15")
        assert by_name["primary"]["in_recovery"] is False
        assert by_name["replica1"]["in_recovery"] is True
        assert by_name["primary"]["database"] == pg_cluster.dbname

        status = await mcp.ok("cluster_status")
        assert {e["name"]: e["role"] for e in status["endpoints"]} == {
            "primary": "primary",
            "replica1": "replica",
            "replica2": "replica",
        }
        assert {e["state"] for e in status["endpoints"]} == {"healthy"}
        assert status["totals"]["endpoints"] == 3
        assert status["totals"]["available_endpoints"] == 3
        assert status["primary"] == "primary"

        history = await mcp.ok("health_history", endpoint="replica1")
        assert len(history["checks"]) == 2
        assert all(check["ok"] for check in history["checks"])
        first, second = history["checks"]
        assert first["checked_at"] >= second["checked_at"]  # newest first

        resource = await mcp.resource("pgwarden://clusters/local/status")
        assert {e["name"] for e in resource["endpoints"]} == {"primary", "replica1", "replica2"}
        schema = await mcp.resource("pgwarden://clusters/local/schema")
        orders = next(t for t in schema["tables"] if t["name"] == "mcp_orders")
        assert [c["name"] for c in orders["columns"]] == [
            "id",
            "customer_id",
            "amount",
            "placed_at",
        ]

    run()(body)


@pytest.mark.usefixtures("typed_table")
def test_every_common_type_reaches_the_client_as_exact_json(cluster: Cluster) -> None:
    async def body(mcp: Mcp) -> None:
        result = await mcp.ok("query", sql="SELECT * FROM jsonsafe_types WHERE id IN (1, 2)")
        full, empty = result["rows"]
        full.pop("moment_tz")  # in the session's time zone; exact values in test_jsonsafe
        assert full == EXPECTED
        assert set(empty.values()) == {2, None}
        types = {column["name"]: column["type"] for column in result["columns"]}
        assert (types["ints"], types["mood"], types["docb"]) == ("int4[]", "jsonsafe_mood", "jsonb")

    run()(body)


def test_large_results_are_truncated_and_timeouts_leave_the_server_serving(
    cluster: Cluster,
) -> None:
    async def body(mcp: Mcp) -> None:
        many = await mcp.ok("query", sql="SELECT generate_series(1, 5000) AS n", max_rows=100)
        assert many["row_count"] == 100
        assert many["truncated"] is True
        assert many["rows"][-1] == {"n": 100}

        default = await mcp.ok("query", sql="SELECT generate_series(1, 5000) AS n")
        assert (default["row_count"], default["truncated"]) == (500, True)

        # The byte cap: 2,000 rows of 10 kB each is 20 MB; far fewer rows come back.
        wide = await mcp.ok(
            "query",
            sql="SELECT repeat('x', 10000) AS pad FROM generate_series(1, 2000)",
            max_rows=2000,
        )
        assert wide["truncated"] is True
        assert 0 < wide["row_count"] < 2000
        assert len(json.dumps(wide["rows"])) <= 1_100_000

        started = time.monotonic()
        slow = await mcp.error("query", sql="SELECT pg_sleep(5)", timeout_ms=300)
        assert time.monotonic() - started < 4
        assert "57014" in slow  # query_canceled: statement timeout
        assert "statement timeout" in slow

        again = await mcp.ok("query", sql="SELECT 1 AS one")
        assert again["rows"] == [{"one": 1}]

    run()(body)


def test_failures_are_tool_errors_with_one_clear_message(cluster: Cluster) -> None:
    async def body(mcp: Mcp) -> None:
        unknown = await mcp.error("query", sql="SELECT 1", cluster="nope")
        assert "nope" in unknown
        assert "local" in unknown  # the known clusters

        missing = await mcp.error("query", sql="SELECT * FROM no_such_table")
        assert "no_such_table" in missing
        assert "42P01" in missing  # undefined_table, from PostgreSQL

        negative = await mcp.error("query", sql="SELECT 1", max_rows=-1)
        assert "max_rows" in negative
        wrong_type = await mcp.error("query", sql=123)
        assert "sql" in wrong_type
        bad_preference = await mcp.error("query", sql="SELECT 1", read_preference="anywhere")
        assert "read_preference" in bad_preference

        write = await mcp.error("query", sql="DELETE FROM mcp_orders")
        assert "DELETE" in write
        assert "refused" in write

        no_writes = await mcp.error("execute", sql="DELETE FROM mcp_orders")
        assert "execute" in no_writes  # not offered without --allow-writes

        no_endpoint = await mcp.error("health_history", endpoint="ghost")
        assert "ghost" in no_endpoint
        assert "replica1" in no_endpoint  # the known endpoints

        no_table = await mcp.error("describe_table", table="ghost_table")
        assert "ghost_table" in no_table

        too_long = await mcp.error("health_history", endpoint="primary", since_minutes=0)
        assert "since_minutes" in too_long

    run()(body)


# Writes


def test_write_tools_commit_report_and_roll_back_as_they_say(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    async def body(mcp: Mcp) -> None:
        inserted = await mcp.ok(
            "execute",
            sql="INSERT INTO mcp_customers (name) VALUES (%s) RETURNING id, name",
            params=["linus"],
        )
        assert inserted["rows_affected"] == 1
        assert inserted["rows"] == [{"id": 3, "name": "linus"}]
        assert inserted["endpoint"] == "primary"

        updated = await mcp.ok("execute", sql="UPDATE mcp_orders SET amount = amount + 1")
        assert updated["rows_affected"] == 2

        # PostgreSQL runs these only outside a transaction block: execute runs them alone.
        vacuumed = await mcp.ok("execute", sql="VACUUM (ANALYZE) mcp_orders")
        assert vacuumed["status"] == "VACUUM"
        indexed = await mcp.ok(
            "execute", sql="CREATE INDEX CONCURRENTLY mcp_orders_amount ON mcp_orders (amount)"
        )
        assert indexed["status"] == "CREATE INDEX"

        stacked = await mcp.error("execute", sql="SELECT 1; DELETE FROM mcp_orders")
        assert "one statement" in stacked

        done = await mcp.ok(
            "transaction",
            statements=[
                {"sql": "INSERT INTO mcp_customers (name) VALUES (%s)", "params": ["barbara"]},
                {"sql": "INSERT INTO mcp_orders (customer_id, amount) VALUES (4, 1)"},
            ],
        )
        assert done["committed"] is True
        assert [s["rows_affected"] for s in done["statements"]] == [1, 1]

        failed = await mcp.error(
            "transaction",
            statements=[
                {"sql": "INSERT INTO mcp_customers (name) VALUES ('margaret')"},
                {"sql": "INSERT INTO mcp_customers (name) VALUES ('ada')"},  # unique violation
            ],
        )
        assert "statement 2" in failed
        assert "nothing was committed" in failed
        assert "23505" in failed

        plan = await mcp.ok("explain", sql="DELETE FROM mcp_orders", analyze=True)
        assert "Actual Rows" in json.dumps(plan["plan"])
        planned = await mcp.ok("explain", sql="DELETE FROM mcp_orders")  # as the write role
        assert "Delete" in json.dumps(planned["plan"])

    run("--allow-writes")(body)

    with psycopg.connect(**pg_cluster.conninfo("primary")) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM mcp_customers ORDER BY id")]
        orders = conn.execute("SELECT count(*) FROM mcp_orders").fetchone()
    assert names == ["ada", "grace", "linus", "barbara"]  # no margaret: rolled back
    assert orders == (3,)  # EXPLAIN ANALYZE DELETE was rolled back


def test_without_writes_explain_analyze_of_a_write_is_refused(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    before = checksum(pg_cluster)

    async def body(mcp: Mcp) -> None:
        refused = await mcp.error("explain", sql="DELETE FROM mcp_orders", analyze=True)
        assert "refused" in refused
        # PostgreSQL plans a write only for a role that may run it: the read role may not,
        # and the error says what would (the write role, with --allow-writes).
        unplanned = await mcp.error("explain", sql="DELETE FROM mcp_orders")
        assert "42501" in unplanned
        assert "--allow-writes" in unplanned

    run()(body)
    assert checksum(pg_cluster) == before


# The escape corpus


ESCAPES = [
    "COMMIT; DROP TABLE mcp_orders",
    "ROLLBACK; DELETE FROM mcp_orders",
    "END; DELETE FROM mcp_orders",
    "SELECT 1; DELETE FROM mcp_orders",
    "SELECT 1 /* ; */ ; DELETE FROM mcp_orders",
    "-- just a comment\nDELETE FROM mcp_orders",
    "SELECT $$;$$; DELETE FROM mcp_orders",
    "SELECT $x$ ' $x$; UPDATE mcp_orders SET amount = 0",
    "BEGIN",
    "BEGIN READ WRITE; DELETE FROM mcp_orders; COMMIT",
    "START TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "RESET ALL",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT * FROM set_config('transaction_read_only', 'off', true)",
    "WITH gone AS (DELETE FROM mcp_orders RETURNING *) SELECT count(*) FROM gone",
    "WITH a AS (SELECT 1), b AS (UPDATE mcp_orders SET amount = 0 RETURNING 1) SELECT * FROM a",
    "SELECT * FROM (WITH x AS (INSERT INTO mcp_customers (name) VALUES ('x') RETURNING 1) "
    "SELECT * FROM x) s",
    "SELECT * INTO mcp_copy FROM mcp_orders",
    "CREATE TABLE mcp_copy AS SELECT * FROM mcp_orders",
    "DO $$ BEGIN DELETE FROM mcp_orders; END $$",
    "CALL mcp_nothing()",
    "COPY mcp_orders TO STDOUT",
    "COPY mcp_orders FROM PROGRAM 'id'",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned'",
    "SELECT * FROM pg_read_file('/etc/passwd')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT 1 WHERE pg_read_file('/etc/hostname') IS NOT NULL",
    "SELECT * FROM mcp_orders o, LATERAL pg_read_binary_file('/etc/passwd') f",
    "SELECT pg_catalog.pg_read_file('postgresql.conf')",
    "SELECT \"pg_read_file\"('postgresql.conf')",
    "SELECT PG_READ_FILE('postgresql.conf')",
    "WITH f AS (SELECT pg_read_file('postgresql.conf')) SELECT * FROM f",
    "EXPLAIN SELECT pg_read_file('postgresql.conf')",
    "SELECT * FROM pg_ls_dir('.')",
    "SELECT pg_stat_file('postgresql.conf')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_export(1, '/tmp/x')",
    "SELECT dblink('host=127.0.0.1', 'DELETE FROM mcp_orders')",
    "SELECT dblink_exec('host=127.0.0.1', 'DELETE FROM mcp_orders')",
    "SELECT nextval('mcp_seq')",
    "SELECT setval('mcp_seq', 100)",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    "SELECT pg_cancel_backend(1)",
    "SELECT pg_reload_conf()",
    "SELECT pg_promote()",
    "SELECT pg_advisory_lock(1)",
    "SELECT * FROM mcp_orders FOR UPDATE",
    "LOCK TABLE mcp_orders",
    "PREPARE p AS DELETE FROM mcp_orders",
    "NOTIFY mcp, 'x'",
    "VACUUM mcp_orders",
    "TRUNCATE mcp_orders",
    "ALTER SYSTEM SET default_transaction_read_only = off",
    "EXPLAIN ANALYZE DELETE FROM mcp_orders",
    "INSERT INTO mcp_customers (name) VALUES ('x') ON CONFLICT DO NOTHING",
    "GRANT ALL ON mcp_orders TO PUBLIC",
    "SELECT txid_current()",
]


def test_no_escape_through_query_changes_anything(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    assert len(ESCAPES) >= 40
    before = checksum(pg_cluster)
    messages: dict[str, str] = {}

    async def body(mcp: Mcp) -> None:
        for sql in ESCAPES:
            messages[sql] = await mcp.error("query", sql=sql)
        # The server keeps serving afterwards.
        assert (await mcp.ok("query", sql="SELECT count(*) AS n FROM mcp_orders"))["rows"] == [
            {"n": 2}
        ]

    run()(body)

    assert checksum(pg_cluster) == before
    # Refused before anything was sent: each says why, none is a server error.
    not_refused = {sql: m for sql, m in messages.items() if "refused" not in m}
    assert not not_refused


# Start-up


def test_start_up_errors_exit_non_zero_with_one_line(cluster: Cluster, tmp_path: Any) -> None:
    unknown = run_manage("run_mcp", "--cluster", "nope")
    assert unknown.returncode != 0
    assert unknown.stdout == ""
    [line] = unknown.stderr.strip().splitlines()
    assert "unknown cluster 'nope'" in line
    assert "local" in line

    empty = tmp_path / "empty.sqlite3"
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{empty}")
    no_database = run_manage("run_mcp", env=env)
    assert no_database.returncode != 0
    assert no_database.stdout == ""
    [line] = no_database.stderr.strip().splitlines()
    assert "control database" in line
    assert "migrate" in line


def raw_initialize(client: str) -> dict[str, Any]:
    """The initialize request, as JSON-RPC, for tests that write the protocol themselves."""
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": client, "version": "0"},
        },
    }


def raw_query_session(client: str, sql: str) -> list[dict[str, Any]]:
    """initialize, initialized, then ``query(sql)`` as request 2."""
    return [
        raw_initialize(client),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": sql}},
        },
    ]


def test_stdout_carries_only_the_protocol_and_the_log_names_the_roles_checked(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    initialize = raw_initialize("raw")
    done = subprocess.run(
        command(),
        cwd=ROOT,
        input=json.dumps(initialize) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    lines = done.stdout.splitlines()
    assert lines, done.stderr
    for line in lines:
        message = json.loads(line)  # anything but JSON-RPC on stdout breaks every client
        assert message["jsonrpc"] == "2.0"
    assert json.loads(lines[0])["result"]["serverInfo"]["name"] == "pgwarden"
    # The assistant role was checked at start-up, and the log says so, without a password.
    assert "cluster local: the assistant's read role is least-privilege" in done.stderr
    for secret in SECRETS:
        assert secret not in done.stderr


def test_pipes_are_served_from_the_event_loop_with_calls_in_flight_and_long_messages(
    cluster: Cluster,
) -> None:
    # Several times asyncio's default line limit (64 KiB), each way.
    big = "x" * 300_000

    # Eleven calls in flight: more than the default limit of concurrent queries (4).
    @run(env={"PGWARDEN_MCP_MAX_CONCURRENT_QUERIES": "16"})
    async def body(mcp: Mcp) -> None:
        data = await mcp.ok("query", sql="SELECT %s AS s, length(%s) AS n", params=[big, big])
        assert data["rows"] == [{"s": big, "n": 300_000}]

        # Calls in flight together: a slow one does not hold up the others.
        finished: list[str] = []

        async def call(label: str, sql: str) -> None:
            await mcp.ok("query", sql=sql)
            finished.append(label)

        async with anyio.create_task_group() as group:
            group.start_soon(call, "slow", "SELECT pg_sleep(1.5) IS NULL AS slept")
            await anyio.sleep(0.2)
            for i in range(10):
                group.start_soon(call, f"quick{i}", f"SELECT {i} AS i")
        assert finished[-1] == "slow", finished
        assert len(finished) == 11
        assert "stdio: serving the pipes from the event loop" in mcp.stderr


def test_stdio_that_is_not_a_pipe_is_served_by_the_sdk_transport(
    cluster: Cluster, tmp_path: Any
) -> None:
    messages = raw_query_session("files", "SELECT 41 + 1 AS answer")
    # stdout a regular file (stdin stays a pipe until the answers are in: EOF ends a session).
    responses = tmp_path / "responses.jsonl"
    with responses.open("wb") as stdout:
        server = subprocess.Popen(
            command(), cwd=ROOT, stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE
        )
        assert server.stdin is not None
        server.stdin.write("".join(json.dumps(m) + "\n" for m in messages).encode())
        server.stdin.flush()
        poll_until(lambda: '"id":2' in responses.read_text(), timeout_s=60)
        _, stderr_bytes = server.communicate(timeout=30)  # closes stdin: the server ends
    stderr = stderr_bytes.decode(errors="replace")

    answers = {}
    for line in responses.read_text().splitlines():
        message = json.loads(line)
        answers[message.get("id")] = message
    assert answers[1]["result"]["serverInfo"]["name"] == "pgwarden", stderr
    assert answers[2]["result"]["structuredContent"]["rows"] == [{"answer": 42}], stderr
    assert "the SDK's threaded transport" in stderr
    assert server.returncode == 0, stderr


@pytest.mark.parametrize("shared", [False, True], ids=["a-socket-each-way", "one-socket"])
def test_sockets_as_node_clients_give_them_are_served(cluster: Cluster, shared: bool) -> None:
    # libuv (Node, Electron) hands a child a socket pair per stream rather than a pipe.
    ours_in, theirs_in = socket.socketpair()
    ours_out, theirs_out = (ours_in, theirs_in) if shared else socket.socketpair()
    with ours_in, theirs_in, ours_out, theirs_out:
        server = subprocess.Popen(
            command(),
            cwd=ROOT,
            stdin=theirs_in.fileno(),
            stdout=theirs_out.fileno(),
            stderr=subprocess.PIPE,
        )
        theirs_in.close()
        theirs_out.close()
        requests = raw_query_session("sockets", "SELECT 6 * 7 AS answer")
        ours_in.sendall("".join(json.dumps(m) + "\n" for m in requests).encode())
        ours_out.settimeout(60)
        replies = ours_out.makefile("rb")
        answers = {}
        while 2 not in answers:
            line = replies.readline()
            assert line, "the server closed its stdout before answering"
            message = json.loads(line)
            answers[message.get("id")] = message
        replies.close()
        ours_in.shutdown(socket.SHUT_WR)  # EOF on the server's stdin: it ends
        _, stderr_bytes = server.communicate(timeout=30)
    stderr = stderr_bytes.decode(errors="replace")

    assert answers[2]["result"]["structuredContent"]["rows"] == [{"answer": 42}], stderr
    expected = "threaded transport" if shared else "serving the pipes from the event loop"
    assert expected in stderr
    assert server.returncode == 0, stderr


# Admin tools


def test_pause_tools_pause_and_resume_and_cluster_status_says_so(cluster: Cluster) -> None:
    async def body(mcp: Mcp) -> None:
        tools = {tool.name: tool for tool in (await mcp.session.list_tools()).tools}
        for name in ("pause_failover", "resume_failover"):
            tool = tools[name]
            assert tool.title
            assert "automatic failover" in tool.title
            assert tool.annotations is not None
            assert tool.annotations.read_only_hint is False
            assert tool.annotations.idempotent_hint is True
            assert {"paused", "paused_since"} <= set((tool.output_schema or {})["properties"])
        status_schema = tools["cluster_status"].output_schema or {}
        assert {"paused", "paused_since", "pause_reason"} <= set(status_schema["properties"])

        status = await mcp.ok("cluster_status")
        assert (status["paused"], status["paused_since"], status["pause_reason"]) == (
            False,
            None,
            "",
        )
        paused = await mcp.ok("pause_failover", reason="minor upgrade")
        assert paused["paused"] is True
        assert paused["changed"] is True
        assert paused["pause_reason"] == "minor upgrade (by mcp)"
        assert paused["fails_over_automatically"] is False
        status = await mcp.ok("cluster_status")
        assert status["paused"] is True
        assert status["paused_since"] == paused["paused_since"] is not None
        assert status["pause_reason"] == "minor upgrade (by mcp)"
        assert "ghost" in await mcp.error("pause_failover", cluster="ghost")

        resumed = await mcp.ok("resume_failover")
        assert resumed["paused"] is False
        assert resumed["changed"] is True
        assert "minor upgrade" in resumed["message"]
        assert (await mcp.ok("cluster_status"))["paused"] is False

    run("--allow-admin")(body)
    assert not Cluster.objects.get(pk=cluster.pk).paused


def test_admin_tools_validate_act_and_record(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    from django.contrib.admin.models import LogEntry

    async def body(mcp: Mcp) -> None:
        checked = await mcp.ok("check_health")
        assert checked["swept"] is True, checked
        assert {e["name"]: e["ok"] for e in checked["endpoints"]} == {
            "primary": True,
            "replica1": True,
            "replica2": True,
        }

        bad_port = await mcp.error("add_endpoint", name="extra", host="127.0.0.1", port=0)
        assert "port" in bad_port
        bad_role = await mcp.error(
            "add_endpoint", name="extra", host="127.0.0.1", port=5432, role="leader"
        )
        assert "role" in bad_role
        duplicate = await mcp.error(
            "add_endpoint", name="replica1", host="127.0.0.1", port=pg_cluster.replicas[0].port
        )
        assert "name" in duplicate

        added = await mcp.ok(
            "add_endpoint", name="extra", host="127.0.0.1", port=pg_cluster.replicas[0].port
        )
        assert added["name"] == "extra"
        assert added["role"] == "replica"

        weighted = await mcp.ok("set_endpoint", name="extra", weight=0)
        assert weighted["weight"] == 0
        negative = await mcp.error("set_endpoint", name="extra", weight=-1)
        assert "weight" in negative

        rechecked = await mcp.ok("check_health")
        assert {e["name"]: e["ok"] for e in rechecked["endpoints"]}["extra"] is True

        primary = await mcp.error("remove_endpoint", name="primary")
        assert "primary" in primary
        removed = await mcp.ok("remove_endpoint", name="extra")
        assert removed["removed"] == "extra"

        nobody = await mcp.error("failover", to="ghost")
        assert "ghost" in nobody

    run("--allow-admin")(body)

    assert not Endpoint.objects.filter(cluster=cluster, name="extra").exists()
    logged = list(LogEntry.objects.order_by("id").values_list("action_flag", "object_repr"))
    assert [flag for flag, _ in logged] == [1, 2, 3]  # added, changed, deleted
    assert all("extra" in label for _, label in logged)


# Failover


def test_during_a_failover_query_answers_from_replicas_and_execute_resumes(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, registered = fresh
    SECRETS[:] = [local.password, local.replication_password, local.assistant_write_password]
    name = registered.name
    Cluster.objects.filter(pk=registered.pk).update(auto_failover=False)
    # As beat's sweeps would have, every second: the replicas are seen streaming from it.
    sweep(registered)

    async def body(mcp: Mcp) -> None:
        written = await mcp.ok("execute", sql="INSERT INTO t (note) VALUES ('before')")
        assert written["rows_affected"] == 1
        await anyio.to_thread.run_sync(local.wait_for_replay)

        local.kill_node("primary")
        # The primary is gone: reads still answer, from the replicas.
        for _ in range(5):
            read = await mcp.ok("query", sql="SELECT count(*) AS n FROM t")
            assert read["rows"] == [{"n": 1}]
            assert read["role"] == "replica"
        # A write has nowhere to go until a replica is promoted; it says so.
        refused = await mcp.error("execute", sql="INSERT INTO t (note) VALUES ('during')")
        assert "primary" in refused

        event = await mcp.ok("failover")
        assert event["outcome"] == "succeeded", event
        assert event["to"] in {"replica1", "replica2"}

        after = await mcp.ok("execute", sql="INSERT INTO t (note) VALUES ('after') RETURNING id")
        assert after["endpoint"] == event["to"]
        rows = await mcp.ok(
            "query", sql="SELECT note FROM t ORDER BY id", read_preference="primary"
        )
        assert [r["note"] for r in rows["rows"]] == ["before", "after"]

    run("--allow-writes", "--allow-admin", "--cluster", name)(body)
    assert Endpoint.objects.get(cluster=registered, name="primary").state == "fenced"


def test_an_unreachable_control_database_is_a_start_up_error_within_seconds(
    silent_port: int,
) -> None:
    # A PostgreSQL control database whose host accepts the connection and then hangs.
    env = dict(os.environ, DATABASE_URL=f"postgres://pgwarden@127.0.0.1:{silent_port}/pgwarden")
    started = time.monotonic()

    done = run_manage("run_mcp", env=env, timeout=60)

    assert time.monotonic() - started < 30  # libpq's connect_timeout, not the OS's minutes
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert "control database" in line
