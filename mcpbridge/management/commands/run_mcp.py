"""``manage.py run_mcp``: serve the Model Context Protocol over stdio."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from endpoints.core.errortext import first_line
from endpoints.models import Cluster
from endpoints.services.assistant import UNSAFE_FLAG, AccessPolicy, StartupCheck
from mcpbridge.server import BridgeConfig, build_server

logger = logging.getLogger("pgwarden.mcp")


class Command(BaseCommand):
    help = (
        "Serve pgwarden's tools over the Model Context Protocol on stdin/stdout, for an "
        "MCP client (a desktop assistant, an IDE). Read-only by default: query, explain, "
        "schemas, tables, status and health history, as each cluster's least-privilege "
        "assistant role. --allow-writes adds execute and transaction (as the assistant "
        "write role); --allow-admin adds check_health, failover and endpoint changes. "
        "Logs go to stderr; stdout carries only the protocol."
    )
    # The protocol owns stdout: Django's system checks must not print there.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--cluster",
            help="Serve only this cluster: tools and resources refuse any other, and use it "
            "when they name none (default: PGWARDEN_MCP_CLUSTER; blank serves every cluster).",
        )
        parser.add_argument(
            "--allow-writes",
            action="store_true",
            default=None,
            help="Offer execute, transaction and EXPLAIN ANALYZE of writes, as each cluster's "
            "assistant write role (default: PGWARDEN_MCP_ALLOW_WRITES, false).",
        )
        parser.add_argument(
            "--allow-admin",
            action="store_true",
            default=None,
            help="Offer check_health, failover, add_endpoint, remove_endpoint and "
            "set_endpoint (default: PGWARDEN_MCP_ALLOW_ADMIN, false).",
        )
        parser.add_argument(
            UNSAFE_FLAG,
            action="store_true",
            dest="unsafe",
            help="Serve clusters whose assistant role is missing (then with the endpoints' "
            "operations role, often a superuser), a superuser, or able to read server "
            "settings or files. Every answer then says so. Not for production.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        scope = options["cluster"] or settings.PGWARDEN_MCP_CLUSTER or None
        allow_writes = bool(options["allow_writes"] or settings.PGWARDEN_MCP_ALLOW_WRITES)
        allow_admin = bool(options["allow_admin"] or settings.PGWARDEN_MCP_ALLOW_ADMIN)
        allow_unsafe = bool(options["unsafe"])
        names = _cluster_names()
        if scope is not None and scope not in names:
            known = ", ".join(names) or "none is registered"
            raise CommandError(f"unknown cluster {scope!r} (known: {known})")
        in_scope = [scope] if scope is not None else names
        policy = AccessPolicy(allow_unsafe=allow_unsafe)
        sql_reads = _check_roles(policy, in_scope, writes=False)
        sql_writes = _check_roles(policy, in_scope, writes=True) if allow_writes else False
        config = BridgeConfig(
            scope=scope,
            allow_writes=allow_writes,
            allow_admin=allow_admin,
            allow_unsafe=allow_unsafe,
            default=scope or (names[0] if len(names) == 1 else None),
            sql_reads=sql_reads,
            sql_writes=sql_writes,
            max_concurrent_queries=settings.PGWARDEN_MCP_MAX_CONCURRENT_QUERIES,
        )
        _log_start(config, in_scope)
        build_server(config, policy).run("stdio")


def _cluster_names() -> list[str]:
    try:
        return list(Cluster.objects.order_by("name").values_list("name", flat=True))
    except DatabaseError as exc:
        first = first_line(exc)
        raise CommandError(
            f"the control database is not usable ({first}); run `manage.py migrate` "
            "or check DATABASE_URL"
        ) from None


def _check_roles(policy: AccessPolicy, clusters: list[str], *, writes: bool) -> bool:
    """Check each cluster's assistant (write) role; whether any cluster may be served.

    Each finding is one line on stderr. A write role that may do too much stops the server:
    ``--allow-writes`` must not quietly hand an assistant a superuser.
    """
    checks = [policy.check_at_start(name, writes=writes) for name in clusters]
    for check in checks:
        _log_check(check)
    unsafe_writes = [check for check in checks if writes and check.unsafe_role and not check.usable]
    if unsafe_writes:
        raise CommandError(unsafe_writes[0].message)
    # No cluster at all: the tools stay listed and say so when called.
    return not checks or any(check.usable for check in checks)


def _log_check(check: StartupCheck) -> None:
    if check.message:
        logger.warning("%s", check.message)
    else:
        kind = "write" if check.writes else "read"
        logger.info("cluster %s: the assistant's %s role is least-privilege", check.cluster, kind)


def _log_start(config: BridgeConfig, in_scope: list[str]) -> None:
    served = config.scope or (", ".join(in_scope) if in_scope else "(no cluster registered)")
    logger.warning(
        "MCP server on stdio: clusters %s%s, writes %s, admin tools %s%s",
        served,
        " (scope)" if config.scope else "",
        "allowed" if config.allow_writes else "refused",
        "allowed" if config.allow_admin else "off",
        f", UNSAFE ({UNSAFE_FLAG})" if config.allow_unsafe else "",
    )
