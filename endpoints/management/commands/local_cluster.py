"""``manage.py local_cluster start|stop|status|destroy|rebuild``: local PostgreSQL and Redis.

``rebuild NODE`` turns a node (typically the fenced former primary after a failover) into a
fresh replica of the current primary, then refreshes its registration and re-admits it.
"""

from __future__ import annotations

import os
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from endpoints import failover
from endpoints.devstack.localcluster import (
    DEFAULT_REDIS_URL,
    LocalClusterError,
    LocalNode,
    LocalPostgresCluster,
    LocalRedis,
    default_cluster_dir,
    local_redis_for_url,
)
from endpoints.models import Cluster, Endpoint, Role, State
from endpoints.services.registration import LOCAL_CLUSTER_NAME, register_local_cluster


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


class Command(BaseCommand):
    help = (
        "Start, stop, show or destroy the local replicated PostgreSQL cluster (a primary and "
        "streaming replicas) and, when REDIS_URL points at this machine, a local Redis. "
        "`rebuild NODE` makes NODE (e.g. the fenced old primary after a failover) a fresh "
        "replica of the current primary (pg_basebackup), then re-registers and re-admits it."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("action", choices=["start", "stop", "status", "destroy", "rebuild"])
        parser.add_argument(
            "node",
            nargs="?",
            metavar="NODE",
            help="rebuild: the node to rebuild (primary, replica1, ...). Its data is replaced.",
        )
        parser.add_argument(
            "--cluster",
            default=LOCAL_CLUSTER_NAME,
            help="rebuild: the name the cluster is registered under, whose registry entry is "
            f"refreshed and re-admitted (default: {LOCAL_CLUSTER_NAME}).",
        )
        parser.add_argument(
            "--dir",
            type=Path,
            default=None,
            help="Base directory of the cluster (default: $PGWARDEN_LOCAL_CLUSTER_DIR, "
            "else <project>/var/local-cluster).",
        )
        parser.add_argument(
            "--replicas", type=int, default=2, help="Streaming replicas (default: 2)."
        )
        parser.add_argument(
            "--yes", action="store_true", help="Confirm destroy: it deletes all local data."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        base_dir: Path = options["dir"] or default_cluster_dir()
        action: str = options["action"]
        cluster = LocalPostgresCluster(base_dir, replicas=options["replicas"])
        redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        redis = local_redis_for_url(redis_url, base_dir / "redis")
        if action == "rebuild" and not options["node"]:
            raise CommandError(
                "rebuild needs the node to rebuild, e.g. `local_cluster rebuild primary`"
            )
        if action == "destroy" and not options["yes"]:
            raise CommandError(
                f"destroy deletes {base_dir} with every database in it; re-run with --yes"
            )
        try:
            if action == "start":
                cluster.start()
                if redis is not None:
                    redis.start()
            elif action == "stop":
                if redis is not None:
                    redis.stop()
                cluster.stop()
            elif action == "rebuild":
                self._rebuild(cluster, options["node"], options["cluster"])
            elif action == "destroy":
                if redis is not None:
                    redis.stop()
                cluster.destroy()
                self.stdout.write(f"Destroyed the local cluster in {base_dir}.")
                return
            self.stdout.write(self._status_table(cluster, redis))
        except LocalClusterError as exc:
            raise CommandError(str(exc)) from exc

    def _rebuild(self, cluster: LocalPostgresCluster, node_name: str, registered_as: str) -> None:
        node = cluster.node(node_name)
        registered = Cluster.objects.filter(name=registered_as).first()
        primary = _current_primary(cluster, node, registered)
        self.stdout.write(f"Rebuilding {node.name} as a replica of {primary.name} ...")
        cluster.rebuild_as_replica(node, primary)
        if registered is None:
            self.stdout.write(f"No cluster {registered_as!r} is registered: registry unchanged.")
            return
        register_local_cluster(cluster, registered_as)
        endpoint = Endpoint.objects.select_related("cluster").get(
            cluster=registered, name=node.name
        )
        if endpoint.state == State.FENCED:
            try:
                failover.readmit(endpoint)
            except failover.FailoverError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"Re-admitted {endpoint}: it is routed to as a replica again.")

    @staticmethod
    def _status_table(cluster: LocalPostgresCluster, redis: LocalRedis | None) -> str:
        if not cluster.exists():
            return f"No local cluster in {cluster.base_dir}; run `manage.py local_cluster start`."
        rows = [["node", "role", "host", "port", "running", "in_recovery", "pid", "error"]]
        for status in cluster.status():
            node = status.node
            rows.append(
                [
                    node.name,
                    node.role,
                    node.host,
                    str(node.port),
                    _yes_no(status.running),
                    _yes_no(status.in_recovery),
                    str(status.pid or "-"),
                    status.error or "",
                ]
            )
        if redis is None:
            # Only the fact: a remote URL may carry a password.
            rows.append(["redis", "-", "-", "-", "-", "-", "-", "REDIS_URL is not local"])
        else:
            owner = "started here" if redis.owns_server else "not started here"
            running = redis.running()
            rows.append(
                [
                    "redis",
                    "redis",
                    redis.host,
                    str(redis.port),
                    _yes_no(running),
                    "-",
                    "-",
                    owner if running else "",
                ]
            )
        return (
            f"Local cluster in {cluster.base_dir} (database {cluster.dbname!r}, "
            f"user {cluster.user!r}; password in {cluster.base_dir / 'cluster.json'})\n"
            + format_table(rows)
        )


def _current_primary(
    cluster: LocalPostgresCluster, rebuilt: LocalNode, registered: Cluster | None
) -> LocalNode:
    """The node to clone from: the registry's primary if it names a node, else the one writable."""
    if registered is not None:
        endpoint = Endpoint.objects.filter(
            cluster=registered, role=Role.PRIMARY, enabled=True
        ).first()
        if endpoint is not None:
            for node in cluster.nodes:
                if node.name == endpoint.name and node.port == endpoint.port:
                    if node.name == rebuilt.name:
                        raise CommandError(
                            f"{rebuilt.name} is the registered primary of {registered.name!r}: "
                            "fail over or switch over first, then rebuild it"
                        )
                    return node
    writable = [
        status.node
        for status in cluster.status()
        if status.node.name != rebuilt.name and status.in_recovery is False
    ]
    if len(writable) != 1:
        found = ", ".join(node.name for node in writable) or "none"
        raise CommandError(
            f"cannot tell which node is the primary to clone {rebuilt.name} from: writable "
            f"nodes other than it: {found}"
        )
    return writable[0]
