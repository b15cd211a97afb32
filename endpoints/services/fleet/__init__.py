"""The fleet service: cluster status, health history and operations, as typed results.

Callers (the MCP server, the dashboard, commands) only parse arguments and show
results: lookups, validation and the audit trail live here, in three modules:

- :mod:`.records`: the typed results shared by both halves, and how rows become them;
- :mod:`.status`: what the fleet looks like (status, live database info, history,
  a sweep now);
- :mod:`.operations`: what changes it (failover, switchover, the maintenance pause, the
  endpoint registry).

Every result is JSON-safe (datetimes as ISO 8601 strings) and never holds a password or
a connection string. Errors callers may translate: ``routing.ClusterNotFound``,
:class:`UnknownEndpoint`, :class:`InvalidInput` (``ValueError``s) and
:class:`FailoverError` (re-exported here so callers need not import ``failover``).
"""

from __future__ import annotations

from endpoints.services.fleet.operations import (
    SYSTEM_USERNAME,
    VIA,
    FailoverError,
    InvalidInput,
    add_endpoint,
    failover,
    pause_failover,
    plan_failover,
    remove_endpoint,
    resume_failover,
    set_endpoint,
)
from endpoints.services.fleet.records import (
    EndpointChanged,
    EndpointRecord,
    EndpointRemoved,
    FailoverEventRecord,
    FailoverPlanRecord,
    PauseRecord,
    PoolSettings,
    _error,
    _iso,
    _primary_first,
    _round,
    endpoint_record,
    failover_event,
    failover_event_data,
    pool_settings,
)
from endpoints.services.fleet.status import (
    ACTIVE_ALERTS_SHOWN,
    MAX_HISTORY_LIMIT,
    MAX_HISTORY_MINUTES,
    ActiveAlert,
    CheckRecord,
    ClusterStatus,
    DatabaseEntry,
    DatabaseInfo,
    EndpointStatus,
    HealthHistory,
    HealthSweep,
    HistorySummary,
    LatestCheck,
    UnknownEndpoint,
    check_health,
    cluster_status,
    database_info,
    get_cluster,
    get_endpoint,
    health_history,
)

__all__ = [
    "ACTIVE_ALERTS_SHOWN",
    "MAX_HISTORY_LIMIT",
    "MAX_HISTORY_MINUTES",
    "SYSTEM_USERNAME",
    "VIA",
    "ActiveAlert",
    "CheckRecord",
    "ClusterStatus",
    "DatabaseEntry",
    "DatabaseInfo",
    "EndpointChanged",
    "EndpointRecord",
    "EndpointRemoved",
    "EndpointStatus",
    "FailoverError",
    "FailoverEventRecord",
    "FailoverPlanRecord",
    "HealthHistory",
    "HealthSweep",
    "HistorySummary",
    "InvalidInput",
    "LatestCheck",
    "PauseRecord",
    "PoolSettings",
    "UnknownEndpoint",
    # The dashboard's shaping helpers, until it has its own presentation module.
    "_error",
    "_iso",
    "_primary_first",
    "_round",
    "add_endpoint",
    "check_health",
    "cluster_status",
    "database_info",
    "endpoint_record",
    "failover",
    "failover_event",
    "failover_event_data",
    "get_cluster",
    "get_endpoint",
    "health_history",
    "pause_failover",
    "plan_failover",
    "pool_settings",
    "remove_endpoint",
    "resume_failover",
    "set_endpoint",
]
