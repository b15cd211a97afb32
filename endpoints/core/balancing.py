"""Which endpoints a query may go to, and which one of those it goes to.

Pure decisions over plain data: no Django, no database, no I/O. The router builds a
:class:`Candidate` per endpoint from the registry and the latest probes, asks
:func:`select_eligible` which of them may serve the request, then asks a per-cluster
:class:`Balancer` to pick one. Roles, states, read preferences, intents and strategy
names are the members of :mod:`endpoints.core.vocabulary` (or their plain string values,
which compare equal), the same values the models' choices are built from; this module does
not import Django so it stays cheap to call and to test.

Eligibility (:func:`select_eligible`)
-------------------------------------
An endpoint is never eligible when it is disabled, has weight 0 (drained), is ``down``
or ``fenced``, or its circuit breaker is open. ``unknown``, ``healthy`` and ``degraded``
endpoints are eligible: ``unknown`` only means no probe has finished yet, and refusing
them would make a freshly started router refuse everything.

Writes go to the endpoint registered as ``primary`` only, never to a replica, and not
when probes saw it in recovery (``pg_is_in_recovery()`` true): the registry and the
server disagree, and a write there would fail or, worse, land on a demoted node. The
read preference is ignored for writes.

Reads follow MongoDB's read preferences:

``primary``
    the primary only.
``primary_preferred``
    the primary; replicas only when no primary is eligible.
``secondary``
    replicas only.
``secondary_preferred``
    replicas; the primary only when no replica is eligible.
``nearest``
    every eligible endpoint of either role whose latency is within
    ``nearest_window_ms`` of the fastest one's. Latency is this process's moving
    average of query latency when it has one (it measures what queries actually see),
    else the probes' round-trip time; endpoints with neither are kept, so a new endpoint
    gets measured instead of being starved.

For reads, a replica is skipped when probes saw it out of recovery (it answers as a
writable primary: a promotion the registry has not caught up with, or a split brain)
and when its replay lag exceeds ``max_lag_s``. A replica whose lag is unknown counts as
within the bound: nothing has measured it yet (first probe pending, or the lag query
is not available), and excluding it would turn every router restart into a burst of
reads on the primary. A primary serving reads is skipped when probes saw it in
recovery.

``avoid`` names the endpoints that already failed this request. They are skipped so a
retry moves elsewhere, unless that leaves nothing eligible after falling back through
the preference tiers: then the selection is recomputed without ``avoid`` and the retry
goes back to the same endpoint after its backoff delay (better than failing at once).

Every candidate ends up either in ``Selection.eligible`` (input order kept, so results
are deterministic) or in ``Selection.excluded`` with one short reason: the first rule
that failed, checked in this order: disabled, weight 0, fenced/down, circuit open,
role for the intent or read preference, registry/recovery contradiction, replication
lag, failed on an earlier attempt, a preferred tier being available, the nearest
latency window. Names are assumed unique within one call.

Picking (:class:`Balancer` and the ``pick_*`` functions)
--------------------------------------------------------
``round_robin``
    each eligible endpoint in turn.
``weighted_round_robin``
    nginx's smooth weighted round robin: exact proportions within every cycle of
    ``sum(weights)`` picks, interleaved rather than in bursts (weights 5/1/1 give
    a a b a c a a).
``least_connections``
    fewest connections in use by this process; ties go to the higher weight, then to
    input order.
``random``
    random, with probability proportional to weight.
``response_time``
    lowest blended latency, ``0.7 * observed + 0.3 * probe`` when both are known,
    whichever is known otherwise; an endpoint with neither counts as 0 ms so it gets
    tried (and thereby measured). Ties: higher weight, then input order.
``health_based``
    highest health score; an endpoint not scored yet counts as 50 (see
    :func:`pick_health_based`). Ties: higher weight, then input order.

The ``pick_*`` functions are pure (state in, state out); :class:`Balancer` holds the
round-robin counter and the smooth-weighted state for one cluster in one process, under
a lock.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from endpoints.core.vocabulary import Intent, ReadPreference, Role, State, Strategy, values

PRIMARY = Role.PRIMARY
REPLICA = Role.REPLICA
# The intents a selection serves: Intent.AUTO is resolved (by classifying the SQL) before.
_ROUTED_INTENTS = (Intent.READ, Intent.WRITE)

_UNROUTABLE_STATES = frozenset({State.DOWN, State.FENCED})
# Sets of the members: a plain string value is found in them too (a StrEnum hashes as its value).
_ROLES = frozenset(Role)
_STATES = frozenset(State)
_READ_PREFERENCES = frozenset(ReadPreference)
_STRATEGIES = frozenset(Strategy)

# A neutral score for endpoints no health sweep has scored yet (see pick_health_based).
UNSCORED_HEALTH = 50

# Weights of the response_time blend: this process's own measurements dominate because
# they are what queries experience; the probe keeps a say because it is fresher for
# endpoints that get little traffic.
OBSERVED_LATENCY_SHARE = 0.7
PROBE_LATENCY_SHARE = 0.3

# Read-only empty defaults: a literal {} default would be one shared mutable dict.
_NO_LATENCIES: Mapping[str, float] = MappingProxyType({})
_NO_CONNECTIONS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class Candidate:
    """One endpoint as the router sees it: registry settings plus the latest probe results."""

    name: str
    role: str  # a Role: "primary" | "replica"
    enabled: bool = True
    state: str = State.UNKNOWN
    weight: int = 100
    in_recovery: bool | None = None  # observed by probes; None = not known yet
    lag_s: float | None = None  # replica replay lag observed by probes
    latency_ms: float | None = None  # probe round-trip latency
    health_score: int | None = None  # 0-100 from health sweeps

    def __post_init__(self) -> None:
        # A misspelt role or state would otherwise pass every rule silently.
        if self.role not in _ROLES:
            raise ValueError(
                f"{self.name}: unknown role {self.role!r}; expected one of {values(Role)}"
            )
        if self.state not in _STATES:
            raise ValueError(
                f"{self.name}: unknown state {self.state!r}; expected one of {values(State)}"
            )
        if self.weight < 0:
            raise ValueError(f"{self.name}: weight cannot be negative (got {self.weight})")


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_eligible`."""

    # In the preferred tier, the ones a strategy may pick from (empty if nothing qualifies).
    eligible: tuple[Candidate, ...]
    # Endpoint name -> why it is not eligible, one short phrase.
    excluded: dict[str, str]


def select_eligible(
    candidates: Sequence[Candidate],
    *,
    intent: str,
    read_preference: str,
    max_lag_s: float | None,
    open_circuits: Collection[str] = (),
    avoid: Collection[str] = (),
    observed_latency_ms: Mapping[str, float] = _NO_LATENCIES,
    nearest_window_ms: float = 15.0,
) -> Selection:
    """The candidates a request may use, and why each of the others may not.

    ``intent`` is ``"read"`` or ``"write"``; ``read_preference`` is ignored for writes;
    ``max_lag_s`` of None means no lag bound. See the module docstring for the rules.
    """
    if intent not in _ROUTED_INTENTS:
        routed = tuple(member.value for member in _ROUTED_INTENTS)
        raise ValueError(f"unknown intent {intent!r}; expected one of {routed}")
    if intent == Intent.READ and read_preference not in _READ_PREFERENCES:
        raise ValueError(
            f"unknown read preference {read_preference!r}; expected one of {values(ReadPreference)}"
        )

    def select(avoiding: Collection[str]) -> Selection:
        return _select(
            candidates,
            intent,
            read_preference,
            max_lag_s,
            open_circuits,
            avoiding,
            observed_latency_ms,
            nearest_window_ms,
        )

    selection = select(avoid)
    if not selection.eligible and avoid:
        # Everything that qualifies already failed this request once: trying one of them
        # again (after the retry delay) beats failing the request outright.
        selection = select(())
    return selection


def _select(
    candidates: Sequence[Candidate],
    intent: str,
    read_preference: str,
    max_lag_s: float | None,
    open_circuits: Collection[str],
    avoid: Collection[str],
    observed_latency_ms: Mapping[str, float],
    nearest_window_ms: float,
) -> Selection:
    excluded: dict[str, str] = {}
    qualified: list[Candidate] = []
    for candidate in candidates:
        reason = _disqualification(
            candidate, intent, read_preference, max_lag_s, open_circuits, avoid
        )
        if reason is None:
            qualified.append(candidate)
        else:
            excluded[candidate.name] = reason

    # Writes, and the primary and secondary preferences, were settled by role above.
    eligible = qualified
    if intent == Intent.READ:
        if read_preference == ReadPreference.PRIMARY_PREFERRED:
            eligible = _preferred_tier(
                qualified, PRIMARY, "primary preferred and available", excluded
            )
        elif read_preference == ReadPreference.SECONDARY_PREFERRED:
            eligible = _preferred_tier(
                qualified, REPLICA, "replicas preferred and available", excluded
            )
        elif read_preference == ReadPreference.NEAREST:
            eligible = _within_latency_window(
                qualified, observed_latency_ms, nearest_window_ms, excluded
            )
    return Selection(eligible=tuple(eligible), excluded=excluded)


def _disqualification(
    candidate: Candidate,
    intent: str,
    read_preference: str,
    max_lag_s: float | None,
    open_circuits: Collection[str],
    avoid: Collection[str],
) -> str | None:
    """Why ``candidate`` cannot serve this request on its own merits, or None if it can.

    Tiering between roles (primary_preferred, secondary_preferred) and the nearest
    window compare candidates with each other, so they happen afterwards.
    """
    if not candidate.enabled:
        return "disabled"
    if candidate.weight <= 0:
        return "weight 0"
    if candidate.state in _UNROUTABLE_STATES:
        return candidate.state
    if candidate.name in open_circuits:
        return "circuit open"

    if intent == Intent.WRITE:
        if candidate.role != PRIMARY:
            return "not a primary (writes go to the primary)"
    elif read_preference == ReadPreference.PRIMARY and candidate.role != PRIMARY:
        return "not a primary (read preference primary)"
    elif read_preference == ReadPreference.SECONDARY and candidate.role != REPLICA:
        return "not a replica (read preference secondary)"

    if candidate.role == PRIMARY:
        if candidate.in_recovery is True:
            return "registered as primary but in recovery"
    else:
        # Only reads get here: writes stopped at the role check above.
        if candidate.in_recovery is False:
            return "registered as replica but not in recovery"
        if max_lag_s is not None and candidate.lag_s is not None and candidate.lag_s > max_lag_s:
            return _lag_reason(candidate.lag_s, max_lag_s)

    if candidate.name in avoid:
        return "failed on an earlier attempt"
    return None


def _preferred_tier(
    qualified: list[Candidate], preferred_role: str, reason: str, excluded: dict[str, str]
) -> list[Candidate]:
    """The qualified candidates of ``preferred_role`` if there are any, else all of them."""
    preferred = [candidate for candidate in qualified if candidate.role == preferred_role]
    if not preferred:
        return qualified
    for candidate in qualified:
        if candidate.role != preferred_role:
            excluded[candidate.name] = reason
    return preferred


def _within_latency_window(
    qualified: list[Candidate],
    observed_latency_ms: Mapping[str, float],
    window_ms: float,
    excluded: dict[str, str],
) -> list[Candidate]:
    """Candidates within ``window_ms`` of the fastest known latency, plus unmeasured ones."""
    latencies = [
        (candidate, observed_latency_ms.get(candidate.name, candidate.latency_ms))
        for candidate in qualified
    ]
    known = [latency for _, latency in latencies if latency is not None]
    if not known:
        return qualified
    fastest = min(known)
    limit = fastest + window_ms
    eligible: list[Candidate] = []
    for candidate, latency in latencies:
        if latency is None or latency <= limit:
            eligible.append(candidate)
        else:
            excluded[candidate.name] = (
                f"outside the {_number(window_ms)} ms latency window "
                f"of the fastest ({_number(fastest)} ms)"
            )
    return eligible


def _lag_reason(lag_s: float, max_lag_s: float) -> str:
    lag_text = _number(lag_s)
    if float(lag_text) <= max_lag_s:
        # Rounding made the lag look within the bound: show it exactly instead.
        lag_text = repr(lag_s)
    return f"replication lag {lag_text} s over the {_number(max_lag_s)} s bound"


def _number(value: float) -> str:
    """Short and readable: 12.3, 10, 0.5; two significant digits below 1 (0.042, 0.31)."""
    if 0 < abs(value) < 1:
        return f"{value:.2g}"
    return f"{value:.1f}".removesuffix(".0")


# Strategies: pure functions


def _require_candidates(eligible: Sequence[Candidate]) -> None:
    if not eligible:
        raise ValueError(
            "no eligible endpoint to pick from: select_eligible() found none, so the "
            "request must fail (or wait) instead of being balanced"
        )


def pick_round_robin(eligible: Sequence[Candidate], counter: int) -> tuple[Candidate, int]:
    """The endpoint at ``counter`` (modulo the count), and the counter for the next pick.

    The returned counter stays below ``len(eligible)``, so it never grows without bound.
    """
    _require_candidates(eligible)
    index = counter % len(eligible)
    return eligible[index], index + 1


def pick_smooth_weighted(
    eligible: Sequence[Candidate], current: Mapping[str, int]
) -> tuple[Candidate, dict[str, int]]:
    """nginx's smooth weighted round robin: the choice, and the state for the next pick.

    Every pick adds each endpoint's weight to its current value, chooses the largest
    (the first one on ties) and subtracts the total weight from the chosen one. Over
    any ``sum(weights)`` consecutive picks from a fresh state each endpoint is chosen
    exactly ``weight`` times, spread out rather than in bursts. Names missing from
    ``current`` start at 0; names that are no longer eligible are dropped.
    """
    _require_candidates(eligible)
    following: dict[str, int] = {}
    total = 0
    chosen = eligible[0]
    chosen_value: int | None = None
    for candidate in eligible:
        value = current.get(candidate.name, 0) + candidate.weight
        following[candidate.name] = value
        total += candidate.weight
        if chosen_value is None or value > chosen_value:
            chosen, chosen_value = candidate, value
    following[chosen.name] -= total
    return chosen, following


def pick_least_connections(eligible: Sequence[Candidate], in_use: Mapping[str, int]) -> Candidate:
    """Fewest connections in use (missing = 0); ties: higher weight, then input order."""
    _require_candidates(eligible)
    best = eligible[0]
    best_key = (in_use.get(best.name, 0), -best.weight)
    for candidate in eligible[1:]:
        key = (in_use.get(candidate.name, 0), -candidate.weight)
        if key < best_key:
            best, best_key = candidate, key
    return best


def pick_weighted_random(eligible: Sequence[Candidate], rng: random.Random) -> Candidate:
    """A random endpoint, with probability proportional to its weight.

    If every weight is 0 (select_eligible never lets that happen) the pick is uniform
    rather than an error.
    """
    _require_candidates(eligible)
    total = sum(candidate.weight for candidate in eligible)
    if total <= 0:
        return eligible[rng.randrange(len(eligible))]
    # Integer arithmetic: exact proportions, no float rounding at the top end.
    remaining = rng.randrange(total)
    for candidate in eligible:
        remaining -= candidate.weight
        if remaining < 0:
            return candidate
    raise AssertionError("unreachable: randrange(total) is below the sum of the weights")


def blended_latency_ms(candidate: Candidate, observed_latency_ms: Mapping[str, float]) -> float:
    """The latency response_time ranks by (see the module docstring)."""
    observed = observed_latency_ms.get(candidate.name)
    probe = candidate.latency_ms
    if observed is not None and probe is not None:
        return OBSERVED_LATENCY_SHARE * observed + PROBE_LATENCY_SHARE * probe
    if observed is not None:
        return observed
    if probe is not None:
        return probe
    return 0.0  # never measured: rank it first so it gets tried, and thereby measured


def pick_response_time(
    eligible: Sequence[Candidate], observed_latency_ms: Mapping[str, float]
) -> Candidate:
    """Lowest blended latency; ties: higher weight, then input order."""
    _require_candidates(eligible)
    best = eligible[0]
    best_key = (blended_latency_ms(best, observed_latency_ms), -best.weight)
    for candidate in eligible[1:]:
        key = (blended_latency_ms(candidate, observed_latency_ms), -candidate.weight)
        if key < best_key:
            best, best_key = candidate, key
    return best


def pick_health_based(eligible: Sequence[Candidate]) -> Candidate:
    """Highest health score; ties: higher weight, then input order.

    An endpoint no health sweep has scored yet counts as 50, the middle of the 0-100
    scale: it passed eligibility (so it is not known to be down), but nothing says it is
    good either. It is not preferred over endpoints proven healthy, and not starved
    behind ones proven poor, which would keep it from ever taking traffic.
    """
    _require_candidates(eligible)
    best = eligible[0]
    best_key = (_health(best), best.weight)
    for candidate in eligible[1:]:
        key = (_health(candidate), candidate.weight)
        if key > best_key:
            best, best_key = candidate, key
    return best


def _health(candidate: Candidate) -> int:
    return UNSCORED_HEALTH if candidate.health_score is None else candidate.health_score


# The stateful wrapper


class Balancer:
    """Per cluster, per process. Thread-safe: holds the round-robin counter and
    smooth-weighted state under a lock.

    ``strategy`` may be reassigned (or :meth:`set_strategy` called) when the cluster's
    setting changes; the rotation state is reset only when the strategy actually changes,
    so re-applying an unchanged configuration does not disturb the smooth-weighted
    sequence.
    """

    def __init__(self, strategy: str, *, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        # Spreading load needs no cryptographic randomness.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._counter = 0
        self._smooth_current: dict[str, int] = {}
        self._strategy = ""
        self.set_strategy(strategy)

    @property
    def strategy(self) -> str:
        return self._strategy

    @strategy.setter
    def strategy(self, strategy: str) -> None:
        self.set_strategy(strategy)

    def set_strategy(self, strategy: str) -> None:
        """Switch strategy; raises ValueError for an unknown name."""
        if strategy not in _STRATEGIES:
            raise ValueError(
                f"unknown load balancing strategy {strategy!r}; expected one of "
                f"{', '.join(values(Strategy))}"
            )
        with self._lock:
            if strategy == self._strategy:
                return
            self._strategy = strategy
            self._counter = 0
            self._smooth_current = {}

    def pick(
        self,
        eligible: Sequence[Candidate],
        *,
        in_use: Mapping[str, int] = _NO_CONNECTIONS,
        observed_latency_ms: Mapping[str, float] = _NO_LATENCIES,
    ) -> Candidate:
        """One endpoint of ``eligible`` by the current strategy; ValueError if it is empty."""
        strategy = self._strategy
        if strategy == Strategy.WEIGHTED_ROUND_ROBIN:
            with self._lock:
                chosen, self._smooth_current = pick_smooth_weighted(eligible, self._smooth_current)
            return chosen
        if strategy == Strategy.ROUND_ROBIN:
            with self._lock:
                chosen, self._counter = pick_round_robin(eligible, self._counter)
            return chosen
        if strategy == Strategy.LEAST_CONNECTIONS:
            return pick_least_connections(eligible, in_use)
        if strategy == Strategy.RANDOM:
            # No lock: random.Random's primitive draws are atomic, and the picks need no
            # sequence guarantee beyond being random.
            return pick_weighted_random(eligible, self._rng)
        if strategy == Strategy.RESPONSE_TIME:
            return pick_response_time(eligible, observed_latency_ms)
        return pick_health_based(eligible)
