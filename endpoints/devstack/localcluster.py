"""The local harness's public names in one place: PostgreSQL cluster, Redis, listeners.

The harness lives in one module per job: :mod:`~endpoints.devstack.postgres` (the
replicated cluster, built on :mod:`~endpoints.devstack.pgstate`,
:mod:`~endpoints.devstack.pgcontrol` and :mod:`~endpoints.devstack.pgsetup`),
:mod:`~endpoints.devstack.localredis`, :mod:`~endpoints.devstack.listeners` and
:mod:`~endpoints.devstack.processes`. Tests, benchmarks and commands import from here,
so they need not know that layout. Nothing here imports Django.
"""

from __future__ import annotations

from endpoints.devstack.listeners import SilentListener
from endpoints.devstack.localredis import (
    DEFAULT_REDIS_URL,
    LocalRedis,
    find_redis_server,
    local_redis_for_url,
)
from endpoints.devstack.pgcontrol import find_pg_bin
from endpoints.devstack.pgstate import (
    APP_DBNAME,
    APP_USER,
    REPLICATION_USER,
    SUPERUSER,
    LocalNode,
    default_cluster_dir,
)
from endpoints.devstack.postgres import LocalPostgresCluster, NodeStatus, parse_lsn
from endpoints.devstack.processes import (
    PG_OS_USER,
    PROJECT_ROOT,
    LocalClusterError,
    free_port,
)

__all__ = [
    "APP_DBNAME",
    "APP_USER",
    "DEFAULT_REDIS_URL",
    "PG_OS_USER",
    "PROJECT_ROOT",
    "REPLICATION_USER",
    "SUPERUSER",
    "LocalClusterError",
    "LocalNode",
    "LocalPostgresCluster",
    "LocalRedis",
    "NodeStatus",
    "SilentListener",
    "default_cluster_dir",
    "find_pg_bin",
    "find_redis_server",
    "free_port",
    "local_redis_for_url",
    "parse_lsn",
]
