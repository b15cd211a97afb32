"""The local PostgreSQL cluster (endpoints.devstack.postgres) against real servers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import (
    LocalClusterError,
    LocalPostgresCluster,
    NodeStatus,
    default_cluster_dir,
    parse_lsn,
)

# Its tests start PostgreSQL clusters of their own.
pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalPostgresCluster]:
    # The mkdtemp dir itself is the base dir: the cluster chowns it to the postgres OS user,
    # and /tmp above it is traversable (pytest's tmp_path is not).
    base = Path(tempfile.mkdtemp(prefix="pgwarden-test-localcluster-"))
    local = LocalPostgresCluster(base, replicas=2)
    try:
        local.start()
        yield local
    finally:
        local.destroy()


def _by_name(statuses: list[NodeStatus]) -> dict[str, NodeStatus]:
    return {status.node.name: status for status in statuses}


def _fetch_all(cluster: LocalPostgresCluster, node: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(**cluster.conninfo(node)) as conn:
        return conn.execute(query).fetchall()


def test_primary_serves_and_replicas_are_in_recovery(cluster: LocalPostgresCluster) -> None:
    statuses = _by_name(cluster.status())

    assert [node.name for node in cluster.nodes] == ["primary", "replica1", "replica2"]
    assert statuses["primary"].running
    assert statuses["primary"].in_recovery is False
    for name in ("replica1", "replica2"):
        assert statuses[name].running
        assert statuses[name].in_recovery is True
        assert statuses[name].error is None


def test_replicas_stream_from_slots_named_after_them(cluster: LocalPostgresCluster) -> None:
    senders = _fetch_all(
        cluster, "primary", "SELECT application_name, state FROM pg_stat_replication"
    )
    slots = _fetch_all(
        cluster, "primary", "SELECT slot_name, active FROM pg_replication_slots ORDER BY 1"
    )

    assert sorted(senders) == [("replica1", "streaming"), ("replica2", "streaming")]
    assert slots == [("replica1", True), ("replica2", True)]


def test_a_row_written_on_the_primary_reaches_both_replicas(
    cluster: LocalPostgresCluster,
) -> None:
    with psycopg.connect(**cluster.conninfo(cluster.primary)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS replicated (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO replicated VALUES (1, 'hello') ON CONFLICT DO NOTHING")

    cluster.wait_for_replay(timeout_s=10)

    for replica in cluster.replicas:
        assert _fetch_all(cluster, replica.name, "SELECT id, note FROM replicated") == [
            (1, "hello")
        ]


def test_stop_then_start_keeps_ports_passwords_and_data(cluster: LocalPostgresCluster) -> None:
    with psycopg.connect(**cluster.conninfo("primary")) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survives (id int)")
        conn.execute("INSERT INTO survives VALUES (42)")
    ports = {node.name: node.port for node in cluster.nodes}

    cluster.stop()
    assert not any(status.running for status in cluster.status())
    # A fresh object, as a later `manage.py local_cluster start` would make.
    again = LocalPostgresCluster(cluster.base_dir, replicas=2)
    again.start()

    assert {node.name: node.port for node in again.nodes} == ports
    assert again.password == cluster.password
    assert _fetch_all(again, "primary", "SELECT id FROM survives") == [(42,)]
    again.wait_for_replay()
    assert _fetch_all(again, "replica2", "SELECT id FROM survives") == [(42,)]


def test_start_is_idempotent_and_fast_when_all_run(cluster: LocalPostgresCluster) -> None:
    before = {status.node.name: status.pid for status in cluster.status()}
    started = time.monotonic()

    cluster.start()

    assert time.monotonic() - started < 5
    assert {status.node.name: status.pid for status in cluster.status()} == before


def test_a_node_stopped_on_its_own_is_reported_and_restarted(
    cluster: LocalPostgresCluster,
) -> None:
    cluster.stop_node("replica1")

    statuses = _by_name(cluster.status())
    assert statuses["replica1"].running is False
    assert statuses["replica1"].pid is None
    assert statuses["replica1"].in_recovery is None
    assert statuses["primary"].running
    assert statuses["replica2"].running

    cluster.start()

    assert _by_name(cluster.status())["replica1"].in_recovery is True


@pytest.mark.parametrize("name", ["replica2", "primary"])
def test_a_killed_node_is_restarted(cluster: LocalPostgresCluster, name: str) -> None:
    pid = _by_name(cluster.status())[name].pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)
    # The killed postmaster may linger as a zombie; it still counts as not running.
    assert poll_until(lambda: not _by_name(cluster.status())[name].running, timeout_s=5), (
        f"{name} still reported running after SIGKILL"
    )
    cluster.start()

    statuses = _by_name(cluster.status())
    assert all(status.running for status in statuses.values())
    assert statuses["primary"].in_recovery is False
    cluster.wait_for_replay(timeout_s=15)


def test_start_failure_names_node_log_and_hint_but_not_the_password(
    cluster: LocalPostgresCluster,
) -> None:
    replica = cluster.node("replica2")
    cluster.stop_node(replica)
    with socket.socket() as squatter:
        # REUSEADDR: the port may be in TIME_WAIT from connections the replica just closed.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((replica.host, replica.port))
        squatter.listen()

        with pytest.raises(LocalClusterError) as caught:
            cluster.start(timeout_s=10)

    message = str(caught.value)
    assert "replica2" in message
    assert str(replica.log_file) in message
    assert "Address already in use" in message
    assert f"port {replica.port} is taken" in message
    assert cluster.password not in message
    cluster.start()


def test_wait_for_replay_fails_clearly_without_leaking_the_password(
    cluster: LocalPostgresCluster,
) -> None:
    cluster.stop_node("replica1")
    try:
        with pytest.raises(LocalClusterError) as caught:
            cluster.wait_for_replay(timeout_s=1)
        message = str(caught.value)
        assert "replica1" in message
        assert cluster.password not in message
    finally:
        cluster.start()


def test_repr_and_state_file_keep_the_password_private(cluster: LocalPostgresCluster) -> None:
    state_file = cluster.base_dir / "cluster.json"

    assert cluster.password not in repr(cluster)
    assert cluster.password not in repr(cluster.nodes)
    assert state_file.stat().st_mode & 0o777 == 0o600
    assert cluster.password in state_file.read_text()
    # The server got a SCRAM verifier, so the plaintext is in no server log.
    for node in cluster.nodes:
        assert cluster.password not in node.log_file.read_text()


def test_the_assistant_roles_exist_with_least_privilege_on_every_node(
    cluster: LocalPostgresCluster,
) -> None:
    for node in cluster.nodes:  # created on the primary, replicated to the others
        for writes in (False, True):
            with psycopg.connect(**cluster.assistant_conninfo(node, writes=writes)) as conn:
                row = conn.execute(
                    "SELECT current_user::text, rolsuper, rolcreaterole, rolreplication, "
                    "pg_has_role(current_user, 'pg_read_all_data', 'MEMBER'), "
                    "pg_has_role(current_user, 'pg_write_all_data', 'MEMBER'), "
                    "pg_has_role(current_user, 'pg_read_all_settings', 'MEMBER') "
                    "FROM pg_roles WHERE rolname = current_user"
                ).fetchone()
            user = cluster.assistant_write_user if writes else cluster.assistant_user
            assert row == (user, False, False, False, True, writes, False)
    # Their passwords, like the application's, reached the server as SCRAM verifiers only.
    for node in cluster.nodes:
        log = node.log_file.read_text()
        assert cluster.assistant_password not in log
        assert cluster.assistant_write_password not in log


def test_a_cluster_from_before_the_assistant_roles_gets_them_at_its_next_start() -> None:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-test-localcluster-upgrade-"))
    local = LocalPostgresCluster(base, replicas=0)
    try:
        local.start()
        state_file = base / "cluster.json"
        old = json.loads(state_file.read_text())
        del old["assistant_password"], old["assistant_write_password"]
        state_file.write_text(json.dumps(old))
        with psycopg.connect(**local.conninfo("primary"), autocommit=True) as conn:
            conn.execute("DROP ROLE pgwarden_assistant")
            conn.execute("REVOKE CREATE ON SCHEMA public FROM pgwarden_assistant_write")
            conn.execute("DROP ROLE pgwarden_assistant_write")

        upgraded = LocalPostgresCluster(base, replicas=0)
        upgraded.start()

        assert upgraded.assistant_password
        assert upgraded.assistant_write_password
        assert json.loads(state_file.read_text())["assistant_password"]
        with psycopg.connect(**upgraded.assistant_conninfo("primary")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("pgwarden_assistant",)
    finally:
        LocalPostgresCluster(base).destroy()


def test_conninfo_targets_the_node_and_takes_overrides(cluster: LocalPostgresCluster) -> None:
    info = cluster.conninfo("replica1", connect_timeout=1, application_name="t")

    assert info["port"] == cluster.node("replica1").port
    assert (info["dbname"], info["user"]) == ("app", "pgwarden")
    assert info["password"] == cluster.password
    assert (info["connect_timeout"], info["application_name"]) == (1, "t")


def test_mismatched_replica_count_is_refused(cluster: LocalPostgresCluster) -> None:
    with pytest.raises(LocalClusterError, match="created with 2 replica"):
        LocalPostgresCluster(cluster.base_dir, replicas=1).start()


def test_an_unknown_cluster_dir_is_reported_not_created() -> None:
    missing = LocalPostgresCluster(Path("/tmp/pgwarden-test-no-such-cluster"))

    assert not missing.exists()
    with pytest.raises(LocalClusterError, match="no local cluster"):
        missing.status()
    missing.stop()
    assert not missing.base_dir.exists()


def test_a_foreign_non_empty_dir_is_neither_used_nor_destroyed() -> None:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-test-foreign-"))
    (base / "precious.txt").write_text("keep me")
    try:
        foreign = LocalPostgresCluster(base)
        with pytest.raises(LocalClusterError, match="not a pgwarden"):
            foreign.start()
        with pytest.raises(LocalClusterError, match="not a pgwarden"):
            foreign.destroy()
        assert (base / "precious.txt").read_text() == "keep me"
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data to the postgres user")
def test_a_base_dir_the_postgres_user_cannot_reach_is_named(tmp_path: Path) -> None:
    hidden = Path(tempfile.mkdtemp(prefix="pgwarden-test-hidden-"))
    try:
        with pytest.raises(LocalClusterError) as caught:
            LocalPostgresCluster(hidden / "cluster").start()
        assert f"{hidden} (mode drwx------) is not traversable" in str(caught.value)
    finally:
        shutil.rmtree(hidden)


def test_parse_lsn_orders_positions() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("0/3000148") == 0x3000148
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")


def test_default_cluster_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGWARDEN_LOCAL_CLUSTER_DIR", raising=False)
    assert default_cluster_dir().parts[-2:] == ("var", "local-cluster")
    monkeypatch.setenv("PGWARDEN_LOCAL_CLUSTER_DIR", "/srv/pgw")
    assert default_cluster_dir() == Path("/srv/pgw")
