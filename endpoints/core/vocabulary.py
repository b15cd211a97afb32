"""pgwarden's one vocabulary: every role, state, preference, strategy and kind, once.

Each is a :class:`enum.StrEnum`, so a member *is* its string: it compares equal to the
value stored in the database, serialises to JSON as that string and can be used where a
plain ``str`` is expected. The Django models build their field choices from these
(:func:`choices`) and the pure rules in :mod:`endpoints.core` test against them, so a
value added here is known everywhere and a misspelt one is a ``ValueError`` at the edge
(``Role("primery")``), not a silent mismatch deep inside.

Human labels (for the admin and the dashboard) live beside each enum in ``LABELS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Role(StrEnum):
    """What an endpoint is in its cluster's replication: PostgreSQL's words, not ours."""

    PRIMARY = "primary"
    REPLICA = "replica"


class State(StrEnum):
    """What health checks concluded about an endpoint (``fenced`` only an operator clears)."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"
    FENCED = "fenced"


class ReadPreference(StrEnum):
    """Where reads may go, with MongoDB's server-selection meanings."""

    PRIMARY = "primary"
    PRIMARY_PREFERRED = "primary_preferred"
    SECONDARY = "secondary"
    SECONDARY_PREFERRED = "secondary_preferred"
    NEAREST = "nearest"


class Strategy(StrEnum):
    """How one endpoint is picked among the eligible ones (load balancing)."""

    ROUND_ROBIN = "round_robin"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    LEAST_CONNECTIONS = "least_connections"
    RANDOM = "random"
    RESPONSE_TIME = "response_time"
    HEALTH_BASED = "health_based"


class RetryStrategy(StrEnum):
    """How the delay between retries grows."""

    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    LINEAR = "linear"


class Intent(StrEnum):
    """What a statement does to data: ``auto`` lets the classifier decide."""

    AUTO = "auto"
    READ = "read"
    WRITE = "write"


class SslMode(StrEnum):
    """libpq's ``sslmode`` values."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class FailoverKind(StrEnum):
    """Why the primary changed: on its own, by an operator's failover, or planned."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"
    SWITCHOVER = "switchover"


class FailoverOutcome(StrEnum):
    """How a failover or switchover ended (``in_progress`` until it does)."""

    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertKind(StrEnum):
    """What an alert is about; each has one condition in :mod:`endpoints.alerts`."""

    LOW_AVAILABILITY = "low_availability"
    SLOW_RESPONSE = "slow_response"
    LOW_HEALTH = "low_health"
    PRIMARY_DOWN = "primary_down"
    REPLICA_LAG = "replica_lag"
    ROLE_MISMATCH = "role_mismatch"
    SPLIT_BRAIN = "split_brain"
    FAILOVER = "failover"


# Keyed by enum first: members of different enums with one value (Role.PRIMARY,
# ReadPreference.PRIMARY) are equal strings, so one flat dict would mix their labels.
LABELS: Mapping[type[StrEnum], Mapping[StrEnum, str]] = {
    ReadPreference: {
        ReadPreference.PRIMARY: "primary (reads on the primary only)",
        ReadPreference.PRIMARY_PREFERRED: "primary preferred (replicas if it is down)",
        ReadPreference.SECONDARY: "secondary (replicas only)",
        ReadPreference.SECONDARY_PREFERRED: "secondary preferred (primary if none is up)",
        ReadPreference.NEAREST: "nearest (lowest latency, any role)",
    },
    Strategy: {
        Strategy.ROUND_ROBIN: "round robin",
        Strategy.WEIGHTED_ROUND_ROBIN: "weighted round robin",
        Strategy.LEAST_CONNECTIONS: "least connections",
        Strategy.RANDOM: "random",
        Strategy.RESPONSE_TIME: "fastest response time",
        Strategy.HEALTH_BASED: "best health score",
    },
    RetryStrategy: {
        RetryStrategy.FIXED: "fixed delay",
        RetryStrategy.EXPONENTIAL: "exponential backoff",
        RetryStrategy.LINEAR: "linear backoff",
    },
    FailoverOutcome: {
        FailoverOutcome.IN_PROGRESS: "in progress",
    },
    AlertKind: {
        AlertKind.LOW_AVAILABILITY: "few endpoints available",
        AlertKind.SLOW_RESPONSE: "slow average response",
        AlertKind.LOW_HEALTH: "low average health score",
        AlertKind.PRIMARY_DOWN: "primary down",
        AlertKind.REPLICA_LAG: "replica lag over bound",
        AlertKind.ROLE_MISMATCH: "role mismatch",
        AlertKind.SPLIT_BRAIN: "split brain",
    },
}


def label(member: StrEnum) -> str:
    """The human label of ``member``: its entry in ``LABELS``, else its value."""
    return LABELS.get(type(member), {}).get(member, member.value)


def choices(enum: type[StrEnum]) -> list[tuple[str, str]]:
    """Django field choices ``[(value, label), ...]`` for ``enum``, in declaration order."""
    return [(member.value, label(member)) for member in enum]


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    """Every value of ``enum`` in declaration order (for messages listing what is valid)."""
    return tuple(member.value for member in enum)
