"""Health score and state of one endpoint from one probe: pure functions, no I/O.

Health score, an integer from 0 (unusable) to 100 (perfect)::

    score = 0                                        if the probe failed (availability)
    score = round(100 - 30 * latency - 40 * lag - 30 * saturation)   otherwise

where each term is a fraction between 0 and 1:

- ``latency = min(1, latency_ms / degraded_latency_ms)``: the probe's round trip
  against the cluster's *degraded latency* (500 ms by default), so a 5 ms answer
  costs 0.3 points and an answer at the degraded bound costs all 30;
- ``lag = min(1, lag_s / max_replica_lag_s)``: a replica's replay lag against the
  cluster's *max replica lag* (10 s by default); 0 for a primary, for a replica
  whose lag is not known yet, and when the cluster sets no bound;
- ``saturation = clamp((in_use / max_connections - 0.5) / 0.5, 0, 1)``: client
  connections against ``max_connections``; nothing below half full, then linear
  to all 30 points when full (0 when the server did not say).

So an endpoint at its degraded latency scores 70, a replica at its lag bound 60,
a server with every connection slot taken 70, and one that does not answer 0.
Lag weighs most because a replica over the bound serves stale reads and is taken
out of routing; latency and saturation make an endpoint slower, not wrong.

State (``next_state``): ``fenced`` stays fenced whatever the probe says (only an
operator clears it); an answer is ``degraded`` when its lag is over the bound or
its latency over the degraded latency, else ``healthy``; a failure is ``down``
once ``failure_threshold`` consecutive probes have failed, and leaves the state
as it was before that (one lost packet does not take an endpoint out of routing).
"""

from __future__ import annotations

from endpoints.core.vocabulary import Role, State

LATENCY_POINTS = 30
LAG_POINTS = 40
SATURATION_POINTS = 30
# Connection use below this share of max_connections costs nothing.
SATURATION_FREE_SHARE = 0.5

# Plain strings (the values of the vocabulary's State): what the state field stores.
HEALTHY = State.HEALTHY.value
DEGRADED = State.DEGRADED.value
DOWN = State.DOWN.value
FENCED = State.FENCED.value


def _fraction(value: float) -> float:
    return min(1.0, max(0.0, value))


def latency_penalty(latency_ms: float | None, degraded_latency_ms: float) -> float:
    """0-1: how close the round trip is to the degraded latency (1 at or over it)."""
    if latency_ms is None or degraded_latency_ms <= 0:
        return 0.0
    return _fraction(latency_ms / degraded_latency_ms)


def lag_penalty(lag_s: float | None, max_lag_s: float | None) -> float:
    """0-1: how close the replay lag is to the cluster's bound (1 at or over it)."""
    if lag_s is None or max_lag_s is None:
        return 0.0
    if max_lag_s <= 0:
        # A bound of 0 tolerates no lag at all.
        return 1.0 if lag_s > 0 else 0.0
    return _fraction(lag_s / max_lag_s)


def saturation_penalty(connections_in_use: int | None, max_connections: int | None) -> float:
    """0-1: connection use past half of max_connections (1 when every slot is taken)."""
    if connections_in_use is None or not max_connections:
        return 0.0
    share = connections_in_use / max_connections
    return _fraction((share - SATURATION_FREE_SHARE) / (1 - SATURATION_FREE_SHARE))


def health_score(
    *,
    ok: bool,
    latency_ms: float | None = None,
    degraded_latency_ms: float = 500.0,
    lag_s: float | None = None,
    max_lag_s: float | None = None,
    connections_in_use: int | None = None,
    max_connections: int | None = None,
) -> int:
    """The 0-100 score of one probe; the formula is in the module docstring."""
    if not ok:
        return 0
    score = (
        100
        - LATENCY_POINTS * latency_penalty(latency_ms, degraded_latency_ms)
        - LAG_POINTS * lag_penalty(lag_s, max_lag_s)
        - SATURATION_POINTS * saturation_penalty(connections_in_use, max_connections)
    )
    return max(0, min(100, round(score)))


def lag_over_bound(lag_s: float | None, max_lag_s: float | None) -> bool:
    """Whether a replay lag exceeds the bound; an unknown lag or no bound is within it.

    The same rule as the router's (endpoints.core.balancing), so state, alerts and
    routing agree on which replicas lag too much.
    """
    return max_lag_s is not None and lag_s is not None and lag_s > max_lag_s


def role_mismatch(role: str, in_recovery: bool | None) -> bool:
    """A registered replica that is not in recovery, or a registered primary that is."""
    if in_recovery is None:
        return False
    return in_recovery is (role == Role.PRIMARY)


def next_state(
    current: str,
    *,
    ok: bool,
    consecutive_failures: int,
    threshold: int,
    latency_ms: float | None = None,
    degraded_latency_ms: float | None = None,
    lag_s: float | None = None,
    max_lag_s: float | None = None,
) -> str:
    """The endpoint's state after a probe; the rules are in the module docstring."""
    if current == FENCED:
        return FENCED
    if ok:
        slow = (
            latency_ms is not None
            and degraded_latency_ms is not None
            and latency_ms > degraded_latency_ms
        )
        return DEGRADED if slow or lag_over_bound(lag_s, max_lag_s) else HEALTHY
    if consecutive_failures >= threshold:
        return DOWN
    return current
