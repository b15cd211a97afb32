"""Alert conditions: what is wrong now, from one sweep's observations; pure, no I/O.

A *condition* is identified by a key per cluster (``primary_down``,
``replica_lag:<endpoint id>``, ...); :func:`conditions` lists those that hold in a
sweep's observations, and :func:`is_evaluated_key` says which keys the evaluation
owns (and so clears when they end). The table of keys is in :mod:`endpoints.alerts`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING

from endpoints.core.observations import Observation
from endpoints.core.vocabulary import AlertKind, AlertSeverity, Role, State

if TYPE_CHECKING:
    from endpoints.models import Cluster, Endpoint

EVENT_KEY_PREFIX = "event:"
# Keys evaluate() owns: it clears them when their condition ends. Other alerts (raised by
# failover, for instance) are left for their owners to clear.
CLUSTER_CONDITION_KEYS = frozenset({"low_availability", "slow_response", "low_health"})
PRIMARY_DOWN_KEY = "primary_down"
ENDPOINT_CONDITION_PREFIXES = ("replica_lag:", "role_mismatch:", "split_brain:")
# Endpoint names listed in a cluster-wide alert's message.
MESSAGE_NAMES = 10


@dataclass(frozen=True)
class Condition:
    """Something wrong now, as one sweep saw it; ``key`` names it across sweeps."""

    key: str
    kind: str
    severity: str
    message: str
    endpoint: Endpoint | None = None


def is_evaluated_key(key: str) -> bool:
    """Whether :func:`evaluate` owns alerts with this key (and so clears them)."""
    return (
        key in CLUSTER_CONDITION_KEYS
        or key == PRIMARY_DOWN_KEY
        or key.startswith(ENDPOINT_CONDITION_PREFIXES)
    )


def conditions(cluster: Cluster, observations: Iterable[Observation]) -> list[Condition]:
    """Every alert condition that holds in one sweep's observations; reads no database."""
    observations = list(observations)
    if not observations:
        return []
    found = _cluster_conditions(cluster, observations)
    for o in observations:
        found.extend(_endpoint_conditions(cluster, o))
    return found


def _cluster_conditions(cluster: Cluster, observations: list[Observation]) -> list[Condition]:
    found: list[Condition] = []
    enabled = len(observations)
    available = [o for o in observations if o.available]
    if len(available) * 100 < cluster.alert_min_available_pct * enabled:
        missing = _some(o.endpoint.name for o in observations if not o.available)
        found.append(
            Condition(
                "low_availability",
                AlertKind.LOW_AVAILABILITY,
                AlertSeverity.CRITICAL if not available else AlertSeverity.WARNING,
                f"{len(available)} of {enabled} enabled endpoints available "
                f"({100 * len(available) / enabled:.0f}%, under the "
                f"{cluster.alert_min_available_pct}% minimum); not available: {missing}",
            )
        )
    latencies = [o.result.latency_ms for o in observations if o.result.latency_ms is not None]
    if latencies and fmean(latencies) > cluster.alert_max_response_ms:
        found.append(
            Condition(
                "slow_response",
                AlertKind.SLOW_RESPONSE,
                AlertSeverity.WARNING,
                f"average probe response {fmean(latencies):.0f} ms over the "
                f"{cluster.alert_max_response_ms:g} ms maximum",
            )
        )
    average_score = fmean(o.score for o in observations)
    if average_score < cluster.alert_min_health_score:
        found.append(
            Condition(
                "low_health",
                AlertKind.LOW_HEALTH,
                AlertSeverity.WARNING,
                f"average health score {average_score:.0f} under the minimum "
                f"{cluster.alert_min_health_score} (lowest: "
                + _some(
                    f"{o.endpoint.name} {o.score}"
                    for o in sorted(observations, key=lambda o: (o.score, o.endpoint.name))
                )
                + ")",
            )
        )
    return found


def _some(names: Iterable[str]) -> str:
    """The first few names, and how many more: a message must stay readable at 500."""
    names = list(names)
    shown = ", ".join(names[:MESSAGE_NAMES])
    return f"{shown} and {len(names) - MESSAGE_NAMES} more" if len(names) > MESSAGE_NAMES else shown


def _endpoint_conditions(cluster: Cluster, o: Observation) -> list[Condition]:
    found = [_primary_down(cluster, o), _split_brain_or_role_mismatch(cluster, o)]
    found.append(_replica_lag(cluster, o))
    return [condition for condition in found if condition is not None]


def _primary_down(cluster: Cluster, o: Observation) -> Condition | None:
    endpoint = o.endpoint
    if endpoint.role != Role.PRIMARY or o.consecutive_failures < cluster.failure_threshold:
        return None
    if cluster.paused and cluster.auto_failover:
        next_step = (
            f"automatic failover is {cluster.pause_text()}: resume it with `manage.py "
            f"failover {cluster.name} --resume`, or fail over by hand"
        )
    elif cluster.auto_failover:
        next_step = "automatic failover is starting"
    else:
        next_step = f"automatic failover is off: run `manage.py failover {cluster.name}`"
    return Condition(
        PRIMARY_DOWN_KEY,
        AlertKind.PRIMARY_DOWN,
        AlertSeverity.CRITICAL,
        f"primary {endpoint.name} failed {o.consecutive_failures} consecutive probes "
        f"({o.result.error}); {next_step}",
        endpoint,
    )


def _split_brain_or_role_mismatch(cluster: Cluster, o: Observation) -> Condition | None:
    """Split brain for a fenced endpoint, else a role that contradicts the registry."""
    endpoint = o.endpoint
    if o.writable_while_fenced:
        refusal = (
            "pgwarden makes it refuse writes"
            if cluster.fence_writes
            else "make it refuse writes or stop it"
        )
        return Condition(
            f"split_brain:{endpoint.pk}",
            AlertKind.SPLIT_BRAIN,
            AlertSeverity.CRITICAL,
            f"{endpoint.name} is fenced but answers as a writable primary: two primaries "
            f"(split brain). It gets no traffic; {refusal}, then rebuild it as a replica.",
            endpoint,
        )
    if not (o.role_mismatch and o.result.ok and o.state != State.FENCED):
        return None
    if endpoint.role == Role.PRIMARY:
        problem = "registered as primary but in recovery: writes have nowhere to go"
    else:
        problem = "registered as a replica but not in recovery: it takes no reads"
    return Condition(
        f"role_mismatch:{endpoint.pk}",
        AlertKind.ROLE_MISMATCH,
        AlertSeverity.CRITICAL,
        f"{endpoint.name} is {problem}; fix the registry (or the server) to agree",
        endpoint,
    )


def _replica_lag(cluster: Cluster, o: Observation) -> Condition | None:
    endpoint, lag_s, bound = o.endpoint, o.result.replay_lag_s, cluster.max_replica_lag_s
    if endpoint.role != Role.REPLICA or not o.available or lag_s is None or bound is None:
        return None
    if lag_s <= bound:
        return None
    return Condition(
        f"replica_lag:{endpoint.pk}",
        AlertKind.REPLICA_LAG,
        AlertSeverity.WARNING,
        f"replica {endpoint.name} lags {lag_s:.1f} s behind the primary, over the "
        f"{bound:g} s bound: not read from until it catches up",
        endpoint,
    )
