"""The failover plan: which replica would be promoted and why, from a survey; and its text.

:func:`plan_failover` probes the cluster and changes nothing (the command's ``--dry-run``
and the admin's preview); the procedures decide on the survey they took under the
lock (:func:`plan_from_survey`). The rules themselves are pure, in
:mod:`endpoints.core.candidates`.
"""

from __future__ import annotations

from dataclasses import replace

from endpoints.core.candidates import FailoverPlan, choose_failover_candidate, format_lsn
from endpoints.core.vocabulary import Role
from endpoints.failover.errors import UnknownEndpoint
from endpoints.failover.survey import Survey, candidate_states, primary_lsn, take_survey
from endpoints.models import Cluster, Endpoint


def plan_from_survey(survey: Survey, to: str | None) -> FailoverPlan:
    """The decision over ``survey``, with the primary's name and whether it answers."""
    chosen = choose_failover_candidate(
        candidate_states(survey),
        survey.cluster.max_failover_lag_bytes,
        to=to,
        primary_lsn=primary_lsn(survey),
    )
    return replace(
        chosen,
        primary=survey.primary.name if survey.primary is not None else None,
        primary_answers=survey.primary_writable if survey.primary is not None else None,
    )


def check_target(cluster: Cluster, to: str | None) -> None:
    """Refuse a ``to`` that names no endpoint of ``cluster``, or its primary."""
    if to is None:
        return
    endpoint = Endpoint.objects.filter(cluster=cluster, name=to).first()
    if endpoint is None:
        names = ", ".join(cluster.endpoints.order_by("name").values_list("name", flat=True))
        raise UnknownEndpoint(f"cluster {cluster.name!r} has no endpoint {to!r} (it has: {names})")
    if endpoint.role == Role.PRIMARY and endpoint.enabled:
        raise UnknownEndpoint(
            f"{to!r} is already the primary of cluster {cluster.name!r}; name a replica"
        )


def plan_failover(cluster: Cluster, *, to: str | None = None) -> FailoverPlan:
    """Probe the cluster now and say what a failover would do (changes nothing)."""
    check_target(cluster, to)
    return plan_from_survey(take_survey(cluster), to)


def describe_plan(plan: FailoverPlan) -> str:
    """The plan in a few lines, for the command, the admin and the event's steps."""
    lines = []
    if plan.primary is None:
        lines.append("primary: none registered")
    else:
        status = "answers as a primary" if plan.primary_answers else "does not answer as a primary"
        lines.append(f"primary: {plan.primary} ({status})")
    if plan.reference_lsn is not None:
        lines.append(f"most advanced known WAL position: {format_lsn(plan.reference_lsn)}")
    if plan.candidate is not None:
        lines.append(f"candidate: {plan.candidate} (lag {plan.candidate_lag_bytes} bytes)")
    lines.append(f"why: {plan.reason}")
    if plan.ranking:
        lines.append(f"eligible, best first: {', '.join(plan.ranking)}")
    lines.extend(f"not eligible: {name}: {why}" for name, why in plan.excluded.items())
    return "\n".join(lines)
