"""Least privilege, through the real MCP stdio protocol against the real local cluster.

The assistant never sees a secret, never exhausts ``run_mcp`` or the server, and stays in
its cluster: each test drives ``manage.py run_mcp`` as a client does (the SDK's stdio
client, a child process) and asserts what reaches the client, what reaches the servers,
and what ``run_mcp`` costs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from endpoints.core.crypto import MASK, Secret
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint
from endpoints.services.registration import RoleSpec, register_cluster, register_local_cluster
from tests.helpers.mcp_client import Body, Mcp, run_body
from tests.helpers.processes import run_manage

pytestmark = pytest.mark.django_db(transaction=True)

SCRAM_VERIFIER = re.compile(r"SCRAM-SHA-256\$")
MD5_VERIFIER = re.compile(r"md5[0-9a-f]{32}")


def secrets_of(pg_cluster: LocalPostgresCluster) -> list[str]:
    """Every password of the local cluster: none may reach an assistant."""
    return [
        pg_cluster.password,
        pg_cluster.replication_password,
        pg_cluster.assistant_password,
        pg_cluster.assistant_write_password,
    ]


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a password reached the client: {text[:300]}"
    assert not SCRAM_VERIFIER.search(text), f"a SCRAM verifier reached the client: {text[:300]}"
    assert not MD5_VERIFIER.search(text), f"an md5 verifier reached the client: {text[:300]}"


def run(
    *flags: str, env: dict[str, str] | None = None, secrets: list[str] | None = None
) -> Callable[[Body], None]:
    """Run an async test body against a fresh ``run_mcp FLAGS``; no secret may be shown."""

    def no_secret_shown(mcp: Mcp) -> None:
        for call in mcp.calls:
            assert_no_secret(call.text + json.dumps(call.data), secrets or [])
        assert_no_secret(mcp.stderr, secrets or [])

    return run_body(*flags, env=env, after=no_secret_shown)


@pytest.fixture
def cluster(local_cluster: Cluster, pg_cluster: LocalPostgresCluster, redis_server: Any) -> Cluster:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lp_orders")
        conn.execute("CREATE TABLE lp_orders (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO lp_orders VALUES (1, 'one'), (2, 'two')")
        # What the catalogs hold must be there to be refused: pg_stats of pg_authid.
        conn.execute("ANALYZE pg_authid")
    pg_cluster.wait_for_replay()
    return local_cluster


def orders(pg_cluster: LocalPostgresCluster) -> list[tuple[int, str]]:
    with psycopg.connect(**pg_cluster.conninfo("primary")) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, note FROM lp_orders ORDER BY id")]


# Secrets


SECRET_READS = [
    ("SHOW primary_conninfo", "secondary"),
    ("SELECT current_setting('primary_conninfo')", "secondary"),
    ("SELECT current_setting('PRIMARY_CONNINFO', true)", "secondary"),
    ("SELECT name, setting FROM pg_settings WHERE name = 'primary_conninfo'", "secondary"),
    ("SELECT * FROM pg_file_settings", "secondary"),
    ("SHOW ALL", "secondary"),
    ("SELECT rolname, rolpassword FROM pg_authid", None),
    ("SELECT rolname, rolpassword FROM pg_catalog.pg_authid", None),
    ('TABLE "pg_authid"', None),
    ("SELECT usename, passwd FROM pg_shadow", None),
    ("SELECT histogram_bounds FROM pg_stats WHERE tablename = 'pg_authid'", None),
    ("SELECT stavalues1 FROM pg_statistic", None),
    ("SELECT table_to_xml('pg_authid', true, false, '')", None),
    ("WITH r AS (SELECT * FROM pg_authid) SELECT rolpassword FROM r", None),
    ("SELECT * FROM pg_hba_file_rules", None),
    ("SELECT * FROM pg_user_mappings", None),
]


def test_no_statement_shows_a_password_or_a_verifier(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    secrets = secrets_of(pg_cluster)

    async def body(mcp: Mcp) -> None:
        for sql, preference in SECRET_READS:
            arguments: dict[str, Any] = {"sql": sql}
            if preference:
                arguments["read_preference"] = preference
            refused = await mcp.error("query", **arguments)
            assert "refused" in refused, (sql, refused)
            explained = await mcp.error("explain", sql=sql, analyze=True)
            assert "refused" in explained, (sql, explained)

    run(secrets=secrets)(body)


def test_the_assistant_role_itself_cannot_read_the_secrets(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    """Defence in depth: past the guard, the role still cannot read settings or write."""
    with psycopg.connect(**pg_cluster.assistant_conninfo("replica1"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_read_all_settings"):
            conn.execute("SHOW primary_conninfo")
        rows = conn.execute(
            "SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'"
        ).fetchall()
        assert rows == [(None,)] or rows == []  # hidden from roles without the privilege
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pg_read_file('postgresql.conf')")
        role = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolreplication, "
            "pg_has_role(current_user, 'pg_read_all_settings', 'MEMBER'), "
            "pg_has_role(current_user, 'pg_monitor', 'MEMBER'), "
            "pg_has_role(current_user, 'pg_read_all_data', 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert role == (False, False, False, False, False, True)


# Bounded resources


def _child_pid(marker: str) -> int:
    """The pid of this process's child whose command line holds ``marker``."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and marker in cmdline:
            return int(entry.name)
    raise AssertionError(f"no child process running {marker}")


def _peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most memory the process has ever had resident."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_a_huge_result_is_cut_on_the_server_and_run_mcp_stays_small(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    async def body(mcp: Mcp) -> None:
        await mcp.ok("query", sql="SELECT repeat('x', 1000) FROM generate_series(1, 100)")
        pid = _child_pid("run_mcp")
        before = _peak_rss_bytes(pid)

        started = time.monotonic()
        result = await mcp.ok(
            "query",
            sql="SELECT repeat('x', 20000000) FROM generate_series(1, 60)",
            max_rows=60,
        )
        elapsed_s = time.monotonic() - started
        grown = _peak_rss_bytes(pid) - before

        assert result["truncated"] is True
        assert result["rows"] == []  # one row alone is over the 1 MB cap
        assert elapsed_s < 30, elapsed_s  # within the default timeout, with time to spare
        assert grown < 300 * 1024 * 1024, f"run_mcp grew by {grown / 2**20:.0f} MiB"

        # Rows that fit come back up to the cap, in the query's order.
        capped = await mcp.ok(
            "query",
            sql="SELECT g, repeat('y', 100000) AS pad FROM generate_series(1, 60) g ORDER BY g",
            max_rows=60,
        )
        assert capped["truncated"] is True
        assert 1 <= capped["row_count"] < 11
        assert [row["g"] for row in capped["rows"]] == list(range(1, capped["row_count"] + 1))

    run(secrets=secrets_of(pg_cluster))(body)


def test_timeouts_are_bounded_and_every_statement_has_a_lock_timeout(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    async def body(mcp: Mcp) -> None:
        too_long = await mcp.error("query", sql="SELECT 1", timeout_ms=600_000)
        assert "timeout_ms must be between 1 and 60000" in too_long

        with psycopg.connect(**pg_cluster.conninfo("primary")) as holder:
            holder.execute("LOCK TABLE lp_orders IN ACCESS EXCLUSIVE MODE")  # until rollback
            started = time.monotonic()
            blocked = await mcp.error(
                "query", sql="SELECT * FROM lp_orders", read_preference="primary"
            )
            waited_s = time.monotonic() - started
            holder.rollback()
        assert "55P03" in blocked, blocked  # lock_not_available: lock_timeout, not a queue
        assert waited_s < 5, waited_s

        settings = await mcp.ok(
            "query",
            sql="SELECT current_setting('lock_timeout') AS lock, "
            "current_setting('standard_conforming_strings') AS scs, "
            "current_setting('temp_file_limit') AS temp, "
            "current_setting('default_transaction_read_only') AS ro",
        )
        assert settings["rows"] == [{"lock": "300ms", "scs": "on", "temp": "1GB", "ro": "on"}]

    run(env={"PGWARDEN_MCP_LOCK_TIMEOUT_MS": "300"}, secrets=secrets_of(pg_cluster))(body)


def test_the_limits_are_set_on_the_roles_and_a_client_cannot_lift_temp_file_limit(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    with psycopg.connect(**pg_cluster.conninfo("primary")) as conn:
        configured = dict(
            conn.execute(
                "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s "
                "JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = ANY(%s)",
                [[pg_cluster.assistant_user, pg_cluster.assistant_write_user]],
            ).fetchall()
        )
    for role in (pg_cluster.assistant_user, pg_cluster.assistant_write_user):
        settings = dict(item.split("=", 1) for item in configured[role])
        assert settings["temp_file_limit"] == "1GB"
        assert settings["statement_timeout"] == "60000ms"
        assert settings["lock_timeout"] == "2000ms"
        assert settings["idle_in_transaction_session_timeout"] == "60000ms"
    assert "default_transaction_read_only" in str(configured[pg_cluster.assistant_user])

    with pytest.raises(psycopg.OperationalError, match="temp_file_limit"):
        psycopg.connect(
            **pg_cluster.assistant_conninfo("primary"), options="-c temp_file_limit=100GB"
        )


def test_too_many_queries_at_once_get_a_busy_error_at_once(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    async def body(mcp: Mcp) -> None:
        outcomes: dict[str, str] = {}

        async def call(label: str, sql: str) -> None:
            done = await mcp.call("query", sql=sql)
            outcomes[label] = done.text if done.is_error else "ok"

        async with anyio.create_task_group() as group:
            group.start_soon(call, "slow", "SELECT pg_sleep(1.5) IS NULL AS slept")
            await anyio.sleep(0.4)
            started = time.monotonic()
            await call("second", "SELECT 1")
            refused_after_s = time.monotonic() - started
        assert outcomes["slow"] == "ok"
        assert "busy" in outcomes["second"]
        assert "PGWARDEN_MCP_MAX_CONCURRENT_QUERIES" in outcomes["second"]
        assert refused_after_s < 1.0  # not queued behind the slow one
        assert (await mcp.ok("query", sql="SELECT 2 AS n"))["rows"] == [{"n": 2}]

    run(env={"PGWARDEN_MCP_MAX_CONCURRENT_QUERIES": "1"}, secrets=secrets_of(pg_cluster))(body)


# The extended protocol and standard_conforming_strings

# With standard_conforming_strings off, '\'' is an escaped quote to the server but a
# complete string and a stray quote to PostgreSQL's parser as the guard runs it: this is one
# SELECT to the guard, and to the server SELECT; COMMIT; DELETE; SELECT.
HIDDEN_DELETE = "SELECT '\\', '; COMMIT; DELETE FROM lp_orders; SELECT ', 1 --'"


def test_sql_never_reaches_the_server_by_the_simple_protocol_whatever_the_server_settings(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    # The statement is a real attack on a session with standard_conforming_strings off and
    # the simple protocol (what explain used to send)...
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lp_victim")
        conn.execute("CREATE TABLE lp_victim (id int)")
        conn.execute("INSERT INTO lp_victim VALUES (1)")
        conn.execute("SET standard_conforming_strings = off")
        conn.execute(HIDDEN_DELETE.replace("lp_orders", "lp_victim").encode())
        assert conn.execute("SELECT count(*) FROM lp_victim").fetchone() == (0,)
        # ...and the assistant's roles now start their sessions with it off.
        for role in (pg_cluster.assistant_user, pg_cluster.assistant_write_user):
            conn.execute(f"ALTER ROLE {role} SET standard_conforming_strings = off")
    try:

        async def body(mcp: Mcp) -> None:
            for tool in ("explain", "query"):
                answer = await mcp.call(tool, sql=HIDDEN_DELETE)
                if not answer.is_error:
                    # Parsed as the guard parsed it: one SELECT of three values.
                    assert "DELETE" not in json.dumps(answer.data)
            executed = await mcp.call("execute", sql=HIDDEN_DELETE)
            assert executed.is_error or executed.data["status"] == "SELECT 1"

        run("--allow-writes", secrets=secrets_of(pg_cluster))(body)
    finally:
        with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
            for role in (pg_cluster.assistant_user, pg_cluster.assistant_write_user):
                conn.execute(f"ALTER ROLE {role} RESET standard_conforming_strings")
    assert orders(pg_cluster) == [(1, "one"), (2, "two")]


# Redaction is not an oracle


def test_a_right_guess_reads_exactly_like_a_wrong_one(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    guesses = {
        "right": [pg_cluster.password, pg_cluster.assistant_password],
        "wrong": ["Wr0ng-guess-number-one-abcdef", "Wr0ng-guess-number-two-abcdef"],
    }
    seen: dict[str, list[str]] = {"right": [], "wrong": []}

    async def body(mcp: Mcp) -> None:
        for kind, values in guesses.items():
            for value in values:
                for sql in (f"SELECT '{value}'::int", f"SELECT '{value},x'::int[]::int"):
                    text = await mcp.error("query", sql=sql)
                    seen[kind].append(text.replace(value, "GUESS"))

    # No leak check: the guesses are the client's own text, echoed back.
    run_body()(body)
    assert seen["right"] == seen["wrong"]
    assert not any(MASK in text for text in seen["right"] + seen["wrong"])


# Scope


@pytest.fixture
def other_cluster(cluster: Cluster, pg_cluster: LocalPostgresCluster) -> Cluster:
    """A second cluster beside ``local``, fully usable (same servers, its own name)."""
    return register_local_cluster(pg_cluster, "other").cluster


def test_cluster_is_a_scope_that_tools_and_resources_keep(
    other_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    async def scoped(mcp: Mcp) -> None:
        calls: list[tuple[str, dict[str, Any]]] = [
            ("query", {"sql": "SELECT 1"}),
            ("explain", {"sql": "SELECT 1"}),
            ("list_schemas", {}),
            ("list_tables", {}),
            ("describe_table", {"table": "lp_orders"}),
            ("database_info", {}),
            ("cluster_status", {}),
            ("health_history", {"endpoint": "primary"}),
            ("execute", {"sql": "DELETE FROM lp_orders"}),
            ("transaction", {"statements": [{"sql": "DELETE FROM lp_orders"}]}),
            ("check_health", {}),
            ("failover", {}),
            ("add_endpoint", {"name": "x", "host": "127.0.0.1", "password": "p"}),
            ("remove_endpoint", {"name": "replica1"}),
            ("set_endpoint", {"name": "replica1", "weight": 0}),
            ("pause_failover", {"reason": "out of scope"}),
            ("resume_failover", {}),
        ]
        for tool, arguments in calls:
            refused = await mcp.error(tool, cluster="other", **arguments)
            assert "out of scope" in refused, (tool, refused)
            assert "'local'" in refused
        for kind in ("status", "schema"):
            with pytest.raises(Exception, match="out of scope"):
                await mcp.resource(f"pgwarden://clusters/other/{kind}")
        assert (await mcp.ok("query", sql="SELECT 1 AS n"))["rows"] == [{"n": 1}]

    run("--cluster", "local", "--allow-writes", "--allow-admin", secrets=secrets_of(pg_cluster))(
        scoped
    )

    async def unscoped(mcp: Mcp) -> None:
        answer = await mcp.ok("query", sql="SELECT 1 AS n", cluster="other")
        assert answer["rows"] == [{"n": 1}]

    run(secrets=secrets_of(pg_cluster))(unscoped)
    assert orders(pg_cluster) == [(1, "one"), (2, "two")]
    assert set(Endpoint.objects.filter(cluster=other_cluster).values_list("name", flat=True)) == {
        "primary",
        "replica1",
        "replica2",
    }
    assert not Cluster.objects.get(pk=other_cluster.pk).paused


# Roles the server refuses, and the flag that serves them anyway


def test_a_cluster_without_an_assistant_role_gets_no_sql_tools_and_one_line_saying_why(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    register_cluster("local", [], assistant=RoleSpec(""))

    async def body(mcp: Mcp) -> None:
        tools = await mcp.tool_names()
        assert "query" not in tools
        assert "cluster_status" in tools  # the registry's view needs no database role
        [line] = [line for line in mcp.stderr.splitlines() if "no assistant role" in line]
        assert "GRANT pg_read_all_data TO pgwarden_assistant" in line
        assert "--assistant-user" in line

    run("--cluster", "local", secrets=secrets_of(pg_cluster))(body)


def test_a_superuser_assistant_role_is_refused_unless_the_flag_says_serve_it_anyway(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    superuser = RoleSpec(pg_cluster.user, Secret(pg_cluster.password))
    register_cluster("local", [], assistant=superuser)

    async def refused(mcp: Mcp) -> None:
        assert "query" not in await mcp.tool_names()
        [line] = [line for line in mcp.stderr.splitlines() if "is a superuser" in line]
        assert "--unsafe-allow-privileged-roles" in line
        assert "GRANT pg_read_all_data" in line

    run(secrets=secrets_of(pg_cluster))(refused)

    async def unsafe(mcp: Mcp) -> None:
        answer = await mcp.ok("query", sql="SELECT current_user AS me")
        assert answer["rows"] == [{"me": pg_cluster.user}]
        assert answer["warning"].startswith("UNSAFE")
        status = await mcp.ok("cluster_status")
        assert status["warning"].startswith("UNSAFE")
        failed = await mcp.error("query", sql="SELECT 1/0")
        assert failed.startswith("Error executing tool query: UNSAFE")
        # The guard still stands in front of the superuser.
        assert "refused" in await mcp.error("query", sql="SHOW primary_conninfo")

    run("--unsafe-allow-privileged-roles", secrets=secrets_of(pg_cluster))(unsafe)


def test_allow_writes_with_a_superuser_write_role_refuses_to_start(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    register_cluster(
        "local", [], assistant_write=RoleSpec(pg_cluster.user, Secret(pg_cluster.password))
    )

    writes = run_manage("run_mcp", "--allow-writes")

    assert writes.returncode != 0
    assert writes.stdout == ""
    [line] = writes.stderr.strip().splitlines()[-1:]
    assert "pgwarden is a superuser" in line
    assert "--unsafe-allow-privileged-roles" in line
    reads_only = run_manage("run_mcp", env=None)  # without --allow-writes it serves reads
    assert "is a superuser" not in reads_only.stderr


# Admin tools cannot move secrets


class CleartextListener:
    """A fake PostgreSQL server on loopback that asks every client for a cleartext password."""

    def __init__(self) -> None:
        self.passwords: list[str] = []
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError, struct.error):
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        while True:
            length, code = struct.unpack("!ii", _read(conn, 8))
            body = _read(conn, length - 8)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                conn.sendall(b"N")
                continue
            break
        del body  # the start-up parameters: user, database, options
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind = _read(conn, 1)
        (length,) = struct.unpack("!i", _read(conn, 4))
        payload = _read(conn, length - 4)
        if kind == b"p":
            self.passwords.append(payload.rstrip(b"\0").decode(errors="replace"))

    def close(self) -> None:
        self._server.close()


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def cleartext_listener() -> Iterator[CleartextListener]:
    listener = CleartextListener()
    yield listener
    listener.close()


def test_add_endpoint_never_sends_a_stored_password_to_a_new_address(
    cluster: Cluster, pg_cluster: LocalPostgresCluster, cleartext_listener: CleartextListener
) -> None:
    async def body(mcp: Mcp) -> None:
        refused = await mcp.error(
            "add_endpoint", name="x", host="127.0.0.1", port=cleartext_listener.port
        )
        assert "new address" in refused
        for host in ("/tmp", "127.0.0.1,10.0.0.1", "localhost 10.0.0.1"):
            invalid = await mcp.error("add_endpoint", name="y", host=host, password="p")
            assert "host" in invalid
        await mcp.ok("check_health")
        await mcp.ok("database_info")

        # With a password of its own, the endpoint gets that one, and nothing else.
        await mcp.ok(
            "add_endpoint",
            name="x",
            host="127.0.0.1",
            port=cleartext_listener.port,
            password="the-one-given-for-x",
        )
        await mcp.ok("check_health")
        await mcp.ok("database_info")
        promoted = await mcp.error("failover", to="x")
        assert "not seen streaming" in promoted or "cannot be promoted" in promoted

    run("--allow-admin", secrets=secrets_of(pg_cluster))(body)
    assert cleartext_listener.connections >= 1  # the health check did try it
    names = dict(
        zip(secrets_of(pg_cluster), ["ops", "replication", "assistant", "write"], strict=True)
    )
    for password in cleartext_listener.passwords:
        assert password == "the-one-given-for-x", names.get(password, "unknown")
    assert Endpoint.objects.get(cluster=cluster, name="x").host == "127.0.0.1"
