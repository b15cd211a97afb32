"""``manage.py local_cluster start|stop|status|destroy``: the local dev PostgreSQL and Redis."""

from __future__ import annotations

import os
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from endpoints.localcluster import (
    DEFAULT_REDIS_URL,
    LocalClusterError,
    LocalPostgresCluster,
    LocalRedis,
    default_cluster_dir,
    local_redis_for_url,
)


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
        "streaming replicas) and, when REDIS_URL points at this machine, a local Redis."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("action", choices=["start", "stop", "status", "destroy"])
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
            elif action == "destroy":
                if redis is not None:
                    redis.stop()
                cluster.destroy()
                self.stdout.write(f"Destroyed the local cluster in {base_dir}.")
                return
            self.stdout.write(self._status_table(cluster, redis))
        except LocalClusterError as exc:
            raise CommandError(str(exc)) from exc

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
