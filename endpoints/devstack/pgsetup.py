"""Creating the nodes of a local cluster: initdb and configuration, roles, replica clones.

:class:`NodeSetup` is the third layer of :class:`~endpoints.devstack.postgres.
LocalPostgresCluster`. A primary is made by ``initdb`` plus our configuration files and
roles; a replica by ``pg_basebackup -R`` from the current primary, with its own slot. A
node whose creation did not finish is discarded and made again, never half reused.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

from endpoints.core.purposes import (
    ASSISTANT_ROLE,
    ASSISTANT_WRITE_ROLE,
    assistant_role_sql,
    quote_literal,
)
from endpoints.core.vocabulary import Role
from endpoints.core.waiting import poll_until
from endpoints.devstack.pgcontrol import NodeControl, scalar
from endpoints.devstack.pgstate import REPLICATION_USER, SUPERUSER, LocalNode
from endpoints.devstack.processes import write_private_file

logger = logging.getLogger(__name__)


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conf_file(settings: dict[str, str]) -> str:
    return "".join(f"{name} = {_conf_value(value)}\n" for name, value in settings.items())


def _drop_slot_unless_active(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Drop replication slot ``slot`` unless a walsender uses it; whether it is gone now."""
    row = conn.execute(
        "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    if row is None:
        return True
    if row[0]:
        return False
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


class NodeSetup(NodeControl):
    """Make the nodes that ``cluster.json`` lists but that do not exist yet."""

    def _create_node(self, node: LocalNode, timeout_s: float) -> None:
        self._discard_partial_node(node)
        if node.role == Role.PRIMARY:
            self._init_primary(node, timeout_s)
        else:
            self._clone_replica(node, timeout_s)
        state = self._require_state()
        state.initialized.append(node.name)
        self._save_state(state)

    def _discard_partial_node(self, node: LocalNode) -> None:
        if not node.data_dir.exists():
            return
        logger.warning("discarding %s: its creation did not finish", node.data_dir)
        if self._pg_status(node)[0]:
            self._pg_stop(node, mode="immediate", timeout_s=60.0)
        shutil.rmtree(node.data_dir)

    def _init_primary(self, node: LocalNode, timeout_s: float) -> None:
        logger.info("initdb %s in %s", node.name, node.data_dir)
        # --locale=C: present on every system, whatever the caller's LANG; --no-sync: the
        # cluster is throwaway, and syncing costs most of initdb's time.
        self._run(
            [
                str(self._bin("initdb")),
                "-D",
                str(node.data_dir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what=f"initdb of {node.name} in {node.data_dir}",
            timeout_s=timeout_s,
        )
        self._write_config(node)
        self._pg_start(node, timeout_s)
        self._bootstrap_roles(node)

    def _write_config(self, primary: LocalNode) -> None:
        network = ipaddress.ip_network(primary.host)
        # Fast settings for a throwaway dev/test cluster. fsync=off: a crash of the OS (not of
        # PostgreSQL) may corrupt it, which is fine here. synchronous_commit stays on, so a
        # kill -9 of the primary in a failover test loses no acknowledged commit.
        # full_page_writes stays on and wal_log_hints is on: pg_rewind needs both to rejoin a
        # former primary as a replica.
        cluster_settings = {
            "listen_addresses": primary.host,
            "unix_socket_directories": str(self._socket_dir),
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "wal_keep_size": "128MB",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_log_hints": "on",
            # Replicas reconnect within a second after the primary restarts (default 5s).
            "wal_retrieve_retry_interval": "1s",
            "fsync": "off",
            "shared_buffers": "32MB",
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        conf_dir = primary.data_dir
        write_private_file(
            conf_dir / "pgwarden_cluster.conf", _conf_file(cluster_settings), for_pg_user=True
        )
        self._write_node_config(primary)
        with (conf_dir / "postgresql.conf").open("a") as handle:
            # Later settings win; replicas copy these files and rewrite only the node file.
            handle.write(
                "\n# Added by pgwarden's local cluster.\n"
                "include 'pgwarden_cluster.conf'\n"
                "include 'pgwarden_node.conf'\n"
            )
        hba = (
            "# pgwarden local cluster. Local connections are trusted: the socket directory is\n"
            "# mode 0700, so only this OS user (and root) can reach them.\n"
            "local   all          all                         trust\n"
            "local   replication  all                         trust\n"
            f"host    all          all          {network}  scram-sha-256\n"
            f"host    replication  {REPLICATION_USER}   {network}  scram-sha-256\n"
        )
        write_private_file(conf_dir / "pg_hba.conf", hba, for_pg_user=True)

    def _write_node_config(self, node: LocalNode) -> None:
        # cluster_name also becomes a replica's application_name in pg_stat_replication.
        settings = {"port": str(node.port), "cluster_name": node.name}
        write_private_file(
            node.data_dir / "pgwarden_node.conf", _conf_file(settings), for_pg_user=True
        )

    def _bootstrap_roles(self, primary: LocalNode) -> None:
        state = self._require_state()
        try:
            with self._connect_superuser(primary) as conn:
                self._ensure_role(conn, state.user, state.password, sql.SQL("LOGIN SUPERUSER"))
                self._ensure_role(
                    conn, REPLICATION_USER, state.replication_password, sql.SQL("LOGIN REPLICATION")
                )
                exists = scalar(
                    conn, "SELECT 1 FROM pg_database WHERE datname = %s", (state.dbname,)
                )
                if not exists:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(state.dbname), sql.Identifier(state.user)
                        )
                    )
        except psycopg.Error as exc:
            raise self._node_error(primary, f"creating roles and database failed: {exc}") from None

    @staticmethod
    def _ensure_role(
        conn: psycopg.Connection[Any], role: str, password: str, attributes: sql.SQL
    ) -> None:
        # Send a SCRAM verifier computed here, so the plaintext password never reaches the
        # server (where a failing statement would be written to its log).
        verifier = conn.pgconn.encrypt_password(
            password.encode(), role.encode(), b"scram-sha-256"
        ).decode()
        exists = scalar(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
        conn.execute(
            sql.SQL("{} {} WITH {} PASSWORD {}").format(
                verb, sql.Identifier(role), attributes, sql.Literal(verifier)
            )
        )

    def _ensure_assistant_roles(self, primary: LocalNode) -> None:
        """Create the MCP server's least-privilege roles on the primary, if missing.

        The read role gets pg_read_all_data, the write role pg_read_all_data,
        pg_write_all_data and CREATE in the application database's public schema; both
        carry the limits of :func:`endpoints.core.purposes.assistant_role_sql`. Existing roles
        are left alone, so a start writes nothing (and works on a read-only old primary).
        """
        state = self._require_state()
        wanted = {
            ASSISTANT_ROLE: (state.assistant_password, False),
            ASSISTANT_WRITE_ROLE: (state.assistant_write_password, True),
        }
        try:
            with self._connect_superuser(primary) as conn:
                existing = {
                    row[0]
                    for row in conn.execute(
                        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(wanted)]
                    )
                }
                missing = [role for role in wanted if role not in existing]
                if not missing:
                    return
                if scalar(conn, "SELECT pg_is_in_recovery()"):
                    logger.warning(
                        "%s is in recovery: the assistant roles (%s) are created once a "
                        "primary starts here",
                        primary.name,
                        ", ".join(missing),
                    )
                    return
                for role in missing:
                    password, writes = wanted[role]
                    self._create_assistant_role(conn, role, password, writes=writes)
            if ASSISTANT_WRITE_ROLE in missing:
                self._grant_schema_create(primary, ASSISTANT_WRITE_ROLE)
        except psycopg.Error as exc:
            raise self._node_error(primary, f"creating the assistant roles failed: {exc}") from None

    @staticmethod
    def _create_assistant_role(
        conn: psycopg.Connection[Any], role: str, password: str, *, writes: bool
    ) -> None:
        # A SCRAM verifier computed here: the plaintext never reaches the server's log.
        verifier = conn.pgconn.encrypt_password(
            password.encode(), role.encode(), b"scram-sha-256"
        ).decode()
        for statement in assistant_role_sql(role, quote_literal(verifier), writes=writes):
            conn.execute(statement.encode())

    def _grant_schema_create(self, primary: LocalNode, role: str) -> None:
        """Let ``role`` create tables in the application database's public schema."""
        with psycopg.connect(
            host=str(self._socket_dir),
            port=primary.port,
            user=SUPERUSER,
            dbname=self._require_state().dbname,
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role))
            )

    def _clone_replica(self, node: LocalNode, timeout_s: float) -> None:
        primary = self.primary
        self._drop_stale_slot(primary, node.name)
        logger.info("pg_basebackup %s from %s", node.name, primary.name)
        # -R writes standby.signal and primary_conninfo (password included, from PGPASSWORD)
        # plus primary_slot_name; -C -S creates that slot, so the primary keeps the WAL the
        # replica still needs. The password goes in the environment, never on the command line.
        self._run(
            [
                str(self._bin("pg_basebackup")),
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                REPLICATION_USER,
                "-D",
                str(node.data_dir),
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                node.name,
                "--checkpoint=fast",
                "--no-sync",
                "--no-password",
            ],
            what=f"pg_basebackup of {node.name} from {primary.name} (port {primary.port})",
            env={"PGPASSWORD": self._require_state().replication_password},
            timeout_s=timeout_s,
            log_file=primary.log_file,
        )
        self._write_node_config(node)
        self._pg_start(node, timeout_s)

    def _drop_stale_slot(self, primary: LocalNode, slot: str) -> None:
        # A replica whose creation was interrupted may have left its slot behind, and
        # pg_basebackup -C fails if the slot exists. Its walsender may take a moment to exit.
        try:
            with self._connect_superuser(primary) as conn:
                if not poll_until(
                    partial(_drop_slot_unless_active, conn, slot), timeout_s=10, interval_s=0.2
                ):
                    raise self._node_error(
                        primary, f"replication slot {slot!r} is still in use by a walsender"
                    )
        except psycopg.Error as exc:
            raise self._node_error(
                primary, f"dropping stale replication slot {slot!r} failed: {exc}"
            ) from None

    def _check_serves_writes(self, node: LocalNode) -> None:
        try:
            with self._connect_superuser(node) as conn:
                in_recovery = bool(scalar(conn, "SELECT pg_is_in_recovery()"))
        except psycopg.Error as exc:
            raise self._node_error(node, f"cannot be cloned from: {exc}") from None
        if in_recovery:
            raise self._node_error(
                node, "is in recovery (a replica); rebuild from the current primary instead"
            )
