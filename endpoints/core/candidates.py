"""Which replica a failover promotes: a pure decision over plain data, with its explanation.

Contract of :func:`choose_failover_candidate`: eligible is enabled, answering, in
recovery, not fenced, *observed streaming from the cluster's current primary*, with a
known WAL position no more than ``max_lag_bytes`` behind the most advanced position known
(the primary's, live or last recorded, and every answering replica's received and
replayed positions, whichever is highest). Among the eligible, the most WAL replayed
wins, then ``promotion_priority``, then weight, then the name, so the choice does not
depend on the order replicas are given in. A replica named by ``to`` is chosen only if it
is eligible. Nothing here does I/O: the failover procedure gathers the states
(:mod:`endpoints.failover.survey`) and acts on the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol


class StreamingEvidence(Protocol):
    """Whether a replica was observed streaming from the primary, and what was seen.

    :class:`endpoints.health.upstream.Streaming` is one; the decision needs only these two.
    """

    @property
    def observed(self) -> bool: ...

    @property
    def detail(self) -> str: ...


@dataclass(frozen=True)
class CandidateState:
    """What the decision needs to know about one replica, detached from the ORM."""

    name: str
    enabled: bool
    answered: bool
    in_recovery: bool | None
    fenced: bool
    # Bytes since 0/0: replayed WAL (what the replica serves now).
    wal_lsn: int | None
    # Lag behind the primary measured while it was up (e.g. by a sweep), if any; the decision
    # uses the larger of it and the lag it computes itself.
    lag_bytes: int | None
    promotion_priority: int
    weight: int
    # Whether the current primary's pg_stat_replication shows it streaming (live, or as the
    # last sweep in which the primary answered recorded it), and what was seen.
    streaming: StreamingEvidence
    # WAL received but maybe not replayed yet: evidence of how far the primary got.
    received_lsn: int | None = None
    # Why it did not answer, for the plan's explanation.
    error: str = ""


@dataclass(frozen=True)
class FailoverPlan:
    """The decision and its explanation: shown before a manual failover, recorded in events."""

    candidate: str | None
    reason: str
    # Eligible replicas, best first.
    ranking: tuple[str, ...]
    # Replica name -> why it cannot be promoted.
    excluded: Mapping[str, str]
    # Replica name -> bytes behind ``reference_lsn`` (replicas whose position is known).
    lag_bytes: Mapping[str, int] = field(default_factory=dict)
    reference_lsn: int | None = None
    # Filled by plan_failover: the registered primary and whether it answers as a primary.
    primary: str | None = None
    primary_answers: bool | None = None

    @property
    def candidate_lag_bytes(self) -> int | None:
        return None if self.candidate is None else self.lag_bytes.get(self.candidate)


def format_lsn(position: int) -> str:
    """Bytes since 0/0 as PostgreSQL writes an LSN (``0/3000148``)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def choose_failover_candidate(
    replicas: Sequence[CandidateState],
    max_lag_bytes: int,
    *,
    to: str | None = None,
    primary_lsn: int | None = None,
) -> FailoverPlan:
    """Pick the replica to promote: pure, so every rule is tested without a server.

    Lag is measured against the most advanced position known: ``primary_lsn`` (live, or the
    last one recorded) and every answering replica's received and replayed positions,
    whichever is highest. ``to`` forces that replica, which must still be eligible.
    """
    reference = _reference_lsn(replicas, primary_lsn)
    excluded: dict[str, str] = {}
    lags: dict[str, int] = {}
    eligible: list[CandidateState] = []
    for replica in replicas:
        lag = _lag(replica, reference)
        if lag is not None:
            lags[replica.name] = lag
        why = _ineligibility(replica, lag, reference, max_lag_bytes)
        if why:
            excluded[replica.name] = why
        else:
            eligible.append(replica)
    eligible.sort(key=_rank_key)
    ranking = tuple(replica.name for replica in eligible)
    plan = FailoverPlan(
        candidate=None,
        reason="",
        ranking=ranking,
        excluded=excluded,
        lag_bytes=lags,
        reference_lsn=reference,
    )

    if to is not None:
        if to in excluded:
            return replace(
                plan, reason=f"{to} was requested but cannot be promoted: {excluded[to]}"
            )
        if to not in ranking:
            return replace(plan, reason=f"{to} is not a replica of this cluster")
        chosen = next(replica for replica in eligible if replica.name == to)
        return replace(plan, candidate=to, reason=f"{to} as requested: {_position(chosen, lags)}")
    if not eligible:
        if not replicas:
            return replace(plan, reason="the cluster has no replica")
        details = "; ".join(f"{name}: {why}" for name, why in excluded.items())
        return replace(plan, reason=f"no replica qualifies ({details})")
    best = eligible[0]
    reason = f"{best.name} has the most WAL replayed: {_position(best, lags)}"
    if len(eligible) > 1:
        reason += _tie_break(best, eligible[1])
    return replace(plan, candidate=best.name, reason=reason)


def _reference_lsn(replicas: Sequence[CandidateState], primary_lsn: int | None) -> int | None:
    """The most advanced WAL position known: the primary's and answering replicas'."""
    evidence = [primary_lsn] if primary_lsn is not None else []
    for replica in replicas:
        if replica.answered and replica.in_recovery:
            evidence += [lsn for lsn in (replica.wal_lsn, replica.received_lsn) if lsn is not None]
    return max(evidence, default=None)


def _lag(replica: CandidateState, reference: int | None) -> int | None:
    computed = (
        None
        if reference is None or replica.wal_lsn is None
        else max(0, reference - replica.wal_lsn)
    )
    known = [lag for lag in (computed, replica.lag_bytes) if lag is not None]
    return max(known, default=None)


def _ineligibility(
    replica: CandidateState, lag: int | None, reference: int | None, max_lag_bytes: int
) -> str:
    """Why ``replica`` cannot be promoted, or "" if it can."""
    if not replica.enabled:
        return "disabled"
    if replica.fenced:
        return "fenced"
    if not replica.answered:
        return f"did not answer ({replica.error})" if replica.error else "did not answer"
    if not replica.in_recovery:
        return "not in recovery: it already accepts writes (a second primary?)"
    if not replica.streaming.observed:
        return f"not seen streaming from the primary: {replica.streaming.detail}"
    if replica.wal_lsn is None or lag is None:
        return "its WAL position is unknown"
    if lag > max_lag_bytes:
        against = f" {format_lsn(reference)}" if reference is not None else ""
        return (
            f"{lag} bytes behind the most advanced known WAL position{against}, over the "
            f"cluster's max failover lag of {max_lag_bytes} bytes"
        )
    return ""


def _rank_key(replica: CandidateState) -> tuple[int, int, int, str]:
    return (-(replica.wal_lsn or 0), -replica.promotion_priority, -replica.weight, replica.name)


def _position(replica: CandidateState, lags: Mapping[str, int]) -> str:
    replayed = format_lsn(replica.wal_lsn) if replica.wal_lsn is not None else "unknown"
    return (
        f"replayed up to {replayed}, {lags.get(replica.name, 0)} bytes behind; "
        f"{replica.streaming.detail}"
    )


def _tie_break(best: CandidateState, runner_up: CandidateState) -> str:
    if best.wal_lsn != runner_up.wal_lsn:
        return ""
    if best.promotion_priority != runner_up.promotion_priority:
        return (
            f"; tied with {runner_up.name} on WAL, higher promotion priority "
            f"({best.promotion_priority} > {runner_up.promotion_priority})"
        )
    if best.weight != runner_up.weight:
        return (
            f"; tied with {runner_up.name} on WAL and priority, higher weight "
            f"({best.weight} > {runner_up.weight})"
        )
    return f"; tied with {runner_up.name} on WAL, priority and weight, first by name"
