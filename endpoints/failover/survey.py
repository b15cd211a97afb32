"""The survey a failover decides on: the registry's view of the cluster plus fresh probes.

:func:`take_survey` reads the cluster's endpoints and probes, concurrently, every enabled
unfenced one and the primary; :func:`candidate_states` turns that into the plain
:class:`~endpoints.core.candidates.CandidateState` values the pure decision takes.

*Observed streaming* is seen from the primary's side, which a server that merely answers
probes as a replica cannot forge (:mod:`endpoints.health.upstream`). When the primary
answers as a primary its walsenders are read live, by the same probe; when it does not,
what sweeps recorded counts (``Endpoint.upstream``, set by every sweep in which the
primary answered), so the last observation made while the primary was alive decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone

from endpoints.core.candidates import CandidateState
from endpoints.core.vocabulary import Role, State
from endpoints.health import upstream
from endpoints.health.probe import ProbeResult, check_endpoints
from endpoints.health.upstream import Streaming, recorded_streaming, streaming_from_primary
from endpoints.models import Cluster, Endpoint

# How long a plan waits for DNS to resolve replica hosts not in the resolver's cache.
RESOLVE_WAIT_S = 2.0


@dataclass(frozen=True)
class Survey:
    """The registry's view of the cluster plus one fresh probe of each endpoint that matters."""

    cluster: Cluster
    primary: Endpoint | None
    primary_result: ProbeResult | None
    # (replica, probe) pairs; probe None when it was not probed (disabled or fenced).
    replicas: tuple[tuple[Endpoint, ProbeResult | None], ...]

    @property
    def primary_writable(self) -> bool:
        result = self.primary_result
        return result is not None and result.ok and result.in_recovery is False

    def replica(self, name: str) -> Endpoint:
        return next(endpoint for endpoint, _ in self.replicas if endpoint.name == name)


def take_survey(cluster: Cluster) -> Survey:
    """Read the cluster's endpoints and probe those that matter, concurrently."""
    endpoints = list(Endpoint.objects.filter(cluster=cluster).select_related("cluster", "upstream"))
    primary = next((e for e in endpoints if e.role == Role.PRIMARY and e.enabled), None)
    replicas = [e for e in endpoints if e.role == Role.REPLICA]
    probed = [e for e in endpoints if e.enabled and e.state != State.FENCED]
    if primary is not None and primary not in probed:
        probed.append(primary)
    results = {endpoint.pk: result for endpoint, result in check_endpoints(probed)}
    return Survey(
        cluster=cluster,
        primary=primary,
        primary_result=results.get(primary.pk) if primary is not None else None,
        replicas=tuple((replica, results.get(replica.pk)) for replica in replicas),
    )


def streaming_evidence(survey: Survey) -> dict[int, Streaming]:
    """Each replica's evidence of streaming from the survey's primary, by primary key.

    Live (the primary's walsenders, from the survey's probe) when the primary answers as
    a primary; else what the last sweep in which it did recorded (``Endpoint.upstream``).
    """
    replicas = [endpoint for endpoint, _ in survey.replicas]
    primary, live = survey.primary, survey.primary_result
    if survey.primary_writable and live is not None:
        resolutions = upstream.RESOLVER.resolve_all(
            (replica.host for replica in replicas), timeout_s=RESOLVE_WAIT_S
        )
        return {
            replica.pk: streaming_from_primary(
                replica.name, resolutions[replica.host], live.walsenders
            )
            for replica in replicas
        }
    now = timezone.now()
    last_sweep_at = max(
        (r.upstream_observed_at for r in replicas if r.upstream_observed_at is not None),
        default=None,
    )
    return {
        replica.pk: recorded_streaming(
            primary=primary.name if primary is not None else None,
            primary_pk=primary.pk if primary is not None else None,
            upstream_pk=replica.upstream_id,
            upstream_name=replica.upstream.name if replica.upstream is not None else "",
            observed_at=replica.upstream_observed_at,
            last_sweep_at=last_sweep_at,
            now=now,
        )
        for replica in replicas
    }


def candidate_state(
    endpoint: Endpoint, result: ProbeResult | None, streaming: Streaming
) -> CandidateState:
    """One replica as the decision sees it: registry fields, its probe, its streaming."""
    answered = result is not None and result.ok
    return CandidateState(
        name=endpoint.name,
        enabled=endpoint.enabled,
        answered=answered,
        in_recovery=result.in_recovery if result is not None else None,
        fenced=endpoint.state == State.FENCED,
        wal_lsn=result.wal_lsn if answered and result is not None else None,
        received_lsn=result.received_lsn if answered and result is not None else None,
        # Only live measurements: a sweep's lag from before the crash may be stale either way.
        lag_bytes=None,
        promotion_priority=endpoint.promotion_priority,
        weight=endpoint.weight,
        streaming=streaming,
        error=result.error if result is not None else "",
    )


def candidate_states(survey: Survey) -> list[CandidateState]:
    """Every registered replica of the survey, as the decision sees it."""
    streaming = streaming_evidence(survey)
    return [
        candidate_state(endpoint, result, streaming[endpoint.pk])
        for endpoint, result in survey.replicas
    ]


def primary_lsn(survey: Survey) -> int | None:
    """The primary's most advanced WAL position known: recorded, or live if it answers."""
    positions = []
    if survey.primary is not None and survey.primary.wal_lsn is not None:
        positions.append(survey.primary.wal_lsn)
    live = survey.primary_result
    if survey.primary_writable and live is not None and live.wal_lsn is not None:
        positions.append(live.wal_lsn)
    return max(positions, default=None)
