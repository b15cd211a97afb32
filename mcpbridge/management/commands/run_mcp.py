"""``manage.py run_mcp``: serve the Model Context Protocol over stdio."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from endpoints import privileges, routing
from endpoints.models import Cluster
from mcpbridge.server import BridgeConfig, build_server

logger = logging.getLogger("pgwarden.mcp")


class Command(BaseCommand):
    help = (
        "Serve pgwarden's tools over the Model Context Protocol on stdin/stdout, for an "
        "MCP client (a desktop assistant, an IDE). Read-only by default: query, explain, "
        "schemas, tables, status and health history. --allow-writes adds execute and "
        "transaction; --allow-admin adds check_health, failover and endpoint changes. "
        "Logs go to stderr; stdout carries only the protocol."
    )
    # The protocol owns stdout: Django's system checks must not print there.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--cluster",
            help="Cluster used when a tool names none (default: PGWARDEN_MCP_CLUSTER, else "
            "the only registered cluster).",
        )
        parser.add_argument(
            "--allow-writes",
            action="store_true",
            default=None,
            help="Offer execute, transaction and EXPLAIN ANALYZE of writes "
            "(default: PGWARDEN_MCP_ALLOW_WRITES, false).",
        )
        parser.add_argument(
            "--allow-admin",
            action="store_true",
            default=None,
            help="Offer check_health, failover, add_endpoint, remove_endpoint and "
            "set_endpoint (default: PGWARDEN_MCP_ALLOW_ADMIN, false).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        config = BridgeConfig(
            cluster=options["cluster"] or settings.PGWARDEN_MCP_CLUSTER or None,
            allow_writes=bool(options["allow_writes"] or settings.PGWARDEN_MCP_ALLOW_WRITES),
            allow_admin=bool(options["allow_admin"] or settings.PGWARDEN_MCP_ALLOW_ADMIN),
        )
        default = _default_cluster(config.cluster)
        _warn_about_read_role(default)
        logger.warning(
            "MCP server on stdio: default cluster %s, writes %s, admin tools %s",
            default or "(none: tools must name one)",
            "allowed" if config.allow_writes else "refused",
            "allowed" if config.allow_admin else "off",
        )
        build_server(BridgeConfig(default, config.allow_writes, config.allow_admin)).run("stdio")


def _default_cluster(requested: str | None) -> str | None:
    try:
        names = list(Cluster.objects.order_by("name").values_list("name", flat=True))
    except DatabaseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(
            f"the control database is not usable ({first}); run `manage.py migrate` "
            "or check DATABASE_URL"
        ) from None
    if requested:
        if requested not in names:
            known = ", ".join(names) or "none is registered"
            raise CommandError(f"unknown cluster {requested!r} (known: {known})")
        return requested
    if len(names) == 1:
        return names[0]
    return None


def _warn_about_read_role(cluster: str | None) -> None:
    if cluster is None:
        return
    try:
        role = privileges.read_role(cluster)
    except routing.RoutingError as exc:
        logger.warning("could not check the role of cluster %s's read path: %s", cluster, exc)
        return
    for warning in role.warnings():
        logger.warning(
            "cluster %s: %s. query still runs in READ ONLY transactions, but a read-only "
            "role is safer (GRANT pg_read_all_data TO a role without write privileges).",
            cluster,
            warning,
        )
