"""endpoints.core.candidates: which replica a failover promotes, without a server.

Examples first, each rule on its own; then properties over random clusters (hypothesis):
the chosen replica is always eligible, never behind another eligible one, and the same
whatever order the replicas come in.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from endpoints.core.candidates import (
    CandidateState,
    FailoverPlan,
    choose_failover_candidate,
    format_lsn,
)
from endpoints.devstack.localcluster import parse_lsn
from endpoints.failover import describe_plan
from endpoints.health.upstream import Streaming

MiB = 1024 * 1024


def replica(name: str, **overrides: Any) -> CandidateState:
    fields: dict[str, Any] = {
        "name": name,
        "enabled": True,
        "answered": True,
        "in_recovery": True,
        "fenced": False,
        "wal_lsn": 1000,
        "received_lsn": 1000,
        "lag_bytes": None,
        "promotion_priority": 0,
        "weight": 100,
        "streaming": SEEN,
    }
    fields.update(overrides)
    return CandidateState(**fields)


SEEN = Streaming(True, "walsender x streams from 10.0.0.1")
UNSEEN = Streaming(False, "no walsender named x on the primary (it has: a, b)")


def choose(*replicas: CandidateState, max_lag: int = MiB, **kwargs: Any) -> FailoverPlan:
    return choose_failover_candidate(list(replicas), max_lag, **kwargs)


def test_the_replica_with_the_most_wal_replayed_wins() -> None:
    plan = choose(replica("a", wal_lsn=900), replica("b", wal_lsn=1000), replica("c", wal_lsn=950))
    assert plan.candidate == "b"
    assert plan.ranking == ("b", "c", "a")
    assert plan.excluded == {}
    assert plan.lag_bytes == {"a": 100, "b": 0, "c": 50}
    assert plan.candidate_lag_bytes == 0
    assert "b has the most WAL replayed" in plan.reason


@pytest.mark.parametrize(
    ("a", "b", "winner", "explained"),
    [
        ({"promotion_priority": 1}, {"promotion_priority": 5}, "b", "higher promotion priority"),
        ({"weight": 100}, {"weight": 10}, "a", "higher weight"),
        ({"weight": 100, "promotion_priority": 0}, {"weight": 1, "promotion_priority": 2}, "b", ""),
        ({}, {}, "a", "first by name"),
    ],
)
def test_ties_on_wal_go_to_priority_then_weight_then_name(
    a: dict[str, Any], b: dict[str, Any], winner: str, explained: str
) -> None:
    plan = choose(replica("b", **b), replica("a", **a))
    assert plan.candidate == winner
    assert explained in plan.reason


def test_more_wal_beats_a_higher_priority_and_weight() -> None:
    plan = choose(
        replica("favourite", wal_lsn=990, promotion_priority=100, weight=1000),
        replica("current", wal_lsn=1000),
    )
    assert plan.candidate == "current"
    assert "tied" not in plan.reason


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"enabled": False}, "disabled"),
        ({"fenced": True}, "fenced"),
        ({"answered": False, "error": "connection refused"}, "did not answer (connection refused)"),
        ({"answered": False}, "did not answer"),
        ({"in_recovery": False}, "not in recovery"),
        (
            {"streaming": UNSEEN},
            "not seen streaming from the primary: no walsender named x on the primary",
        ),
        ({"wal_lsn": None, "received_lsn": None}, "WAL position is unknown"),
        ({"wal_lsn": 1000 - MiB - 1}, "over the cluster's max failover lag"),
    ],
)
def test_ineligible_replicas_are_excluded_with_the_reason(
    overrides: dict[str, Any], why: str
) -> None:
    plan = choose(replica("bad", **overrides), replica("good", wal_lsn=1000))
    assert plan.candidate == "good"
    assert plan.ranking == ("good",)
    assert why in plan.excluded["bad"]


def test_a_replica_not_seen_streaming_is_never_promoted_even_when_requested() -> None:
    plan = choose(replica("fake", wal_lsn=10_000, received_lsn=10_000, streaming=UNSEEN), to="fake")
    assert plan.candidate is None
    assert plan.reason == (
        "fake was requested but cannot be promoted: not seen streaming from the primary: "
        f"{UNSEEN.detail}"
    )
    plan = choose(replica("fake", streaming=UNSEEN), replica("real", wal_lsn=900))
    assert plan.candidate == "real"
    assert plan.ranking == ("real",)


def test_why_a_silent_replica_is_excluded_comes_before_whether_it_streams() -> None:
    plan = choose(replica("gone", answered=False, error="refused", streaming=UNSEEN))
    assert plan.excluded == {"gone": "did not answer (refused)"}


def test_the_reason_for_the_candidate_says_what_shows_it_streams() -> None:
    plan = choose(replica("a", streaming=Streaming(True, "recorded streaming from p 3 s ago")))
    assert plan.candidate == "a"
    assert plan.reason.endswith("0 bytes behind; recorded streaming from p 3 s ago")


def test_a_lag_of_exactly_the_bound_is_still_eligible() -> None:
    plan = choose(
        replica("edge", wal_lsn=0, received_lsn=0),
        replica("x", enabled=False, wal_lsn=MiB, received_lsn=MiB),
    )
    assert plan.candidate == "edge"
    assert plan.candidate_lag_bytes == MiB


def test_lag_counts_from_the_primarys_last_known_position_when_it_is_highest() -> None:
    plan = choose(replica("a", wal_lsn=1000, received_lsn=1000), primary_lsn=1000 + 2 * MiB)
    assert plan.candidate is None
    assert plan.reference_lsn == 1000 + 2 * MiB
    assert f"{2 * MiB} bytes behind" in plan.excluded["a"]
    assert "no replica qualifies (a: " in plan.reason


def test_wal_received_but_not_replayed_shows_how_far_the_primary_got() -> None:
    # Replay paused: the replica received 2 MiB it has not replayed; with the old primary
    # gone that received WAL is the only evidence, and the replica must not be promoted.
    paused = replica("paused", wal_lsn=1000, received_lsn=1000 + 2 * MiB)
    plan = choose(paused)
    assert plan.candidate is None
    assert plan.lag_bytes == {"paused": 2 * MiB}
    # Another replica's received WAL counts just as much.
    plan = choose(
        replica("a", wal_lsn=1000, received_lsn=1000),
        replica("b", enabled=False, wal_lsn=5, received_lsn=1000 + 2 * MiB),
    )
    assert plan.candidate is None
    assert "over the cluster's max failover lag" in plan.excluded["a"]


def test_positions_of_replicas_that_did_not_answer_or_are_not_in_recovery_do_not_count() -> None:
    plan = choose(
        replica("a", wal_lsn=1000),
        replica("silent", answered=False, wal_lsn=10 * MiB, received_lsn=10 * MiB),
        replica("rogue", in_recovery=False, wal_lsn=20 * MiB, received_lsn=None),
    )
    assert plan.candidate == "a"
    assert plan.reference_lsn == 1000


def test_a_lag_measured_elsewhere_counts_when_it_is_larger() -> None:
    plan = choose(replica("a", lag_bytes=2 * MiB), replica("b", wal_lsn=999))
    assert plan.candidate == "b"
    assert plan.lag_bytes["a"] == 2 * MiB


def test_to_forces_an_eligible_replica_even_if_it_is_not_the_best() -> None:
    plan = choose(replica("best", wal_lsn=1000), replica("chosen", wal_lsn=990), to="chosen")
    assert plan.candidate == "chosen"
    assert plan.ranking == ("best", "chosen")
    assert plan.reason.startswith("chosen as requested")


def test_to_an_ineligible_replica_promotes_nothing_and_says_why() -> None:
    plan = choose(replica("best"), replica("off", enabled=False), to="off")
    assert plan.candidate is None
    assert plan.reason == "off was requested but cannot be promoted: disabled"


def test_to_an_unknown_name_promotes_nothing() -> None:
    plan = choose(replica("a"), to="nope")
    assert plan.candidate is None
    assert plan.reason == "nope is not a replica of this cluster"


def test_without_replicas_nothing_is_promoted() -> None:
    plan = choose()
    assert plan.candidate is None
    assert plan.reason == "the cluster has no replica"
    assert plan.ranking == ()


def test_when_nothing_qualifies_every_replica_is_explained() -> None:
    plan = choose(replica("a", enabled=False), replica("b", fenced=True))
    assert plan.candidate is None
    assert plan.reason == "no replica qualifies (a: disabled; b: fenced)"


def _reference_choice(replicas: list[CandidateState], max_lag: int) -> str | None:
    """The rules spelled out as plainly as possible, to check the real function against."""
    positions = [
        lsn
        for r in replicas
        if r.answered and r.in_recovery
        for lsn in (r.wal_lsn, r.received_lsn)
        if lsn is not None
    ]
    top = max(positions, default=None)
    eligible = [
        r
        for r in replicas
        if r.enabled
        and not r.fenced
        and r.answered
        and r.in_recovery
        and r.streaming.observed
        and r.wal_lsn is not None
        and top is not None
        and top - r.wal_lsn <= max_lag
    ]
    if not eligible:
        return None
    best_lsn = max(r.wal_lsn or 0 for r in eligible)
    tied = [r for r in eligible if r.wal_lsn == best_lsn]
    best_priority = max(r.promotion_priority for r in tied)
    tied = [r for r in tied if r.promotion_priority == best_priority]
    best_weight = max(r.weight for r in tied)
    return min(r.name for r in tied if r.weight == best_weight)


def test_the_decision_matches_the_rules_on_thousands_of_random_clusters() -> None:
    rng = random.Random(20240604)
    for _ in range(5000):
        replicas = []
        for index in range(rng.randint(0, 4)):
            wal = rng.choice([None, 0, 500_000, 1_000_000, 1_048_576, 1_500_000, 3_000_000])
            received = None if wal is None else wal + rng.choice([0, 0, 1_000, 2 * MiB])
            replicas.append(
                replica(
                    f"r{index}",
                    enabled=rng.random() > 0.15,
                    answered=rng.random() > 0.15,
                    in_recovery=rng.random() > 0.1,
                    fenced=rng.random() < 0.1,
                    streaming=SEEN if rng.random() > 0.1 else UNSEEN,
                    wal_lsn=wal,
                    received_lsn=received,
                    promotion_priority=rng.choice([0, 0, 1, 5]),
                    weight=rng.choice([0, 10, 100]),
                )
            )
        plan = choose_failover_candidate(replicas, MiB)
        assert plan.candidate == _reference_choice(replicas, MiB), replicas
        assert set(plan.ranking) | set(plan.excluded) == {r.name for r in replicas}
        assert not set(plan.ranking) & set(plan.excluded)
        assert plan.reason
        if plan.candidate is not None:
            assert plan.ranking[0] == plan.candidate


def test_every_name_is_either_ranked_or_excluded_for_every_combination() -> None:
    flags = itertools.product([True, False], repeat=5)
    for enabled, answered, in_recovery, fenced, streams in flags:
        one = replica(
            "x",
            enabled=enabled,
            answered=answered,
            in_recovery=in_recovery,
            fenced=fenced,
            streaming=SEEN if streams else UNSEEN,
        )
        plan = choose(one)
        eligible = enabled and answered and in_recovery and not fenced and streams
        assert (plan.candidate == "x") is eligible
        assert ("x" in plan.excluded) is not eligible


def test_lsns_are_formatted_as_postgresql_writes_them() -> None:
    for text in ("0/0", "0/3000148", "16/B374D848", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text


def test_describe_plan_names_the_candidate_its_lag_and_the_excluded() -> None:
    plan = replace(
        choose(replica("a", wal_lsn=1000), replica("b", enabled=False)),
        primary="primary",
        primary_answers=False,
    )
    text = describe_plan(plan)
    assert "primary: primary (does not answer as a primary)" in text
    assert "candidate: a (lag 0 bytes)" in text
    assert "not eligible: b: disabled" in text


# Properties over random clusters

# The random cluster test above covers thousands of cases already; these stay quick for
# `make test-unit`, and hypothesis keeps failing examples in its database for the next run.
PROPERTIES = settings(max_examples=150, deadline=None)
POSITIONS = st.one_of(st.none(), st.integers(min_value=0, max_value=4 * MiB))


@st.composite
def candidate_states(draw: st.DrawFn, name: str) -> CandidateState:
    wal_lsn = draw(POSITIONS)
    received_extra = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2 * MiB)))
    return CandidateState(
        name=name,
        enabled=draw(st.booleans()),
        answered=draw(st.booleans()),
        in_recovery=draw(st.sampled_from([True, True, False, None])),
        fenced=draw(st.booleans()),
        wal_lsn=wal_lsn,
        received_lsn=None
        if wal_lsn is None or received_extra is None
        else wal_lsn + received_extra,
        lag_bytes=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2 * MiB))),
        promotion_priority=draw(st.integers(min_value=-2, max_value=3)),
        weight=draw(st.integers(min_value=0, max_value=3)),
        streaming=draw(st.sampled_from([SEEN, UNSEEN])),
        error=draw(st.sampled_from(["", "connection refused"])),
    )


@st.composite
def clusters(draw: st.DrawFn) -> list[CandidateState]:
    names = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6))
    return [draw(candidate_states(name)) for name in names]


MAX_LAGS = st.sampled_from([0, 1000, MiB, 3 * MiB])
PRIMARY_LSNS = st.one_of(st.none(), st.integers(min_value=0, max_value=5 * MiB))


def _eligible(replica: CandidateState, plan: FailoverPlan, max_lag: int) -> bool:
    lag = plan.lag_bytes.get(replica.name)
    return (
        replica.enabled
        and not replica.fenced
        and replica.answered
        and bool(replica.in_recovery)
        and replica.streaming.observed
        and replica.wal_lsn is not None
        and lag is not None
        and lag <= max_lag
    )


@PROPERTIES
@given(clusters(), MAX_LAGS, PRIMARY_LSNS)
def test_the_chosen_replica_is_never_ineligible(
    replicas: list[CandidateState], max_lag: int, primary_lsn: int | None
) -> None:
    plan = choose_failover_candidate(replicas, max_lag, primary_lsn=primary_lsn)
    by_name = {r.name: r for r in replicas}
    assert set(plan.ranking) | set(plan.excluded) == set(by_name)
    assert not set(plan.ranking) & set(plan.excluded)
    for name in plan.ranking:
        assert _eligible(by_name[name], plan, max_lag), by_name[name]
    for name in plan.excluded:
        assert not _eligible(by_name[name], plan, max_lag), by_name[name]
    if plan.candidate is not None:
        assert plan.candidate not in plan.excluded
        assert plan.candidate_lag_bytes is not None
        assert plan.candidate_lag_bytes <= max_lag
    assert (plan.candidate is None) == (not plan.ranking)


@PROPERTIES
@given(clusters(), MAX_LAGS, PRIMARY_LSNS)
def test_the_chosen_replica_is_never_behind_another_eligible_one(
    replicas: list[CandidateState], max_lag: int, primary_lsn: int | None
) -> None:
    plan = choose_failover_candidate(replicas, max_lag, primary_lsn=primary_lsn)
    if plan.candidate is None:
        return
    by_name = {r.name: r for r in replicas}
    chosen = by_name[plan.candidate]
    for name in plan.ranking:
        other = by_name[name]
        assert (chosen.wal_lsn or 0) >= (other.wal_lsn or 0)
        if other.wal_lsn == chosen.wal_lsn:
            assert chosen.promotion_priority >= other.promotion_priority
    ranked_lsns = [by_name[name].wal_lsn or 0 for name in plan.ranking]
    assert ranked_lsns == sorted(ranked_lsns, reverse=True)


@PROPERTIES
@given(st.data(), clusters(), MAX_LAGS, PRIMARY_LSNS)
def test_the_choice_does_not_depend_on_the_order_of_the_replicas(
    data: st.DataObject, replicas: list[CandidateState], max_lag: int, primary_lsn: int | None
) -> None:
    shuffled = data.draw(st.permutations(replicas))
    plan = choose_failover_candidate(replicas, max_lag, primary_lsn=primary_lsn)
    again = choose_failover_candidate(shuffled, max_lag, primary_lsn=primary_lsn)
    assert again.candidate == plan.candidate
    assert again.ranking == plan.ranking
    assert again.excluded == plan.excluded
    assert again.lag_bytes == plan.lag_bytes
    assert again.reference_lsn == plan.reference_lsn
    if plan.candidate is not None:
        assert again.reason == plan.reason


@PROPERTIES
@given(clusters(), MAX_LAGS, PRIMARY_LSNS)
def test_the_reference_position_is_the_highest_evidence_and_lags_are_never_negative(
    replicas: list[CandidateState], max_lag: int, primary_lsn: int | None
) -> None:
    plan = choose_failover_candidate(replicas, max_lag, primary_lsn=primary_lsn)
    evidence = [primary_lsn] if primary_lsn is not None else []
    for r in replicas:
        if r.answered and r.in_recovery:
            evidence += [lsn for lsn in (r.wal_lsn, r.received_lsn) if lsn is not None]
    assert plan.reference_lsn == max(evidence, default=None)
    assert all(lag >= 0 for lag in plan.lag_bytes.values())


@PROPERTIES
@given(st.data(), clusters(), MAX_LAGS)
def test_a_requested_replica_is_chosen_exactly_when_it_is_eligible(
    data: st.DataObject, replicas: list[CandidateState], max_lag: int
) -> None:
    to = data.draw(st.sampled_from([r.name for r in replicas] + ["unregistered"]))
    free = choose_failover_candidate(replicas, max_lag)
    plan = choose_failover_candidate(replicas, max_lag, to=to)
    assert plan.ranking == free.ranking
    if to in free.ranking:
        assert plan.candidate == to
    else:
        assert plan.candidate is None
        assert to in plan.reason


@PROPERTIES
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_format_lsn_writes_what_parse_lsn_reads(position: int) -> None:
    assert parse_lsn(format_lsn(position)) == position
