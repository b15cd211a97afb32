"""endpoints.core.balancing: eligibility rules, read preferences, and every picking strategy.

Pure functions over plain data: no database, no network, seeded randomness.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from endpoints.core.balancing import (
    Balancer,
    Candidate,
    Selection,
    blended_latency_ms,
    pick_health_based,
    pick_least_connections,
    pick_response_time,
    pick_round_robin,
    pick_smooth_weighted,
    pick_weighted_random,
    select_eligible,
)
from endpoints.core.vocabulary import ReadPreference, Role, State, Strategy, values

ROLES = values(Role)
STATES = values(State)
READ_PREFERENCES = values(ReadPreference)
STRATEGIES = values(Strategy)


def primary(name: str = "p", **fields: Any) -> Candidate:
    return Candidate(name=name, role="primary", **fields)


def replica(name: str, **fields: Any) -> Candidate:
    return Candidate(name=name, role="replica", **fields)


def read(
    candidates: Sequence[Candidate],
    read_preference: str = "nearest",
    *,
    max_lag_s: float | None = None,
    **options: Any,
) -> Selection:
    return select_eligible(
        candidates,
        intent="read",
        read_preference=read_preference,
        max_lag_s=max_lag_s,
        **options,
    )


def write(candidates: Sequence[Candidate], **options: Any) -> Selection:
    return select_eligible(
        candidates, intent="write", read_preference="secondary", max_lag_s=None, **options
    )


def names(selection: Selection) -> list[str]:
    return [candidate.name for candidate in selection.eligible]


# The vocabulary's values are what the rules and the models both use


def test_the_rules_accept_every_value_of_the_vocabulary_and_the_models_use_it() -> None:
    # balancing.py must not import Django: it and the models share endpoints.core.vocabulary.
    from endpoints import models

    assert models.Role is Role
    assert models.State is State
    assert models.ReadPreference is ReadPreference
    assert models.LoadBalancing is Strategy
    for role, state in itertools.product(Role, State):
        assert Candidate(name="x", role=role, state=state).role == role.value
    for role_value, state_value in itertools.product(ROLES, STATES):
        Candidate(name="x", role=role_value, state=state_value)  # plain strings work too
    for preference in ReadPreference:
        select_eligible([primary()], intent="read", read_preference=preference, max_lag_s=None)
    for strategy in Strategy:
        assert Balancer(strategy).pick([primary()]).name == "p"


# Candidate validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"role": "standby"}, "unknown role 'standby'"),
        ({"role": "replica", "state": "up"}, "unknown state 'up'"),
        ({"role": "replica", "weight": -1}, "weight cannot be negative"),
    ],
)
def test_candidate_rejects_values_outside_the_model_choices(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Candidate(name="x", **fields)


# Exclusion rules, one at a time


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"enabled": False}, "disabled"),
        ({"weight": 0}, "weight 0"),
        ({"state": "fenced"}, "fenced"),
        ({"state": "down"}, "down"),
    ],
)
def test_never_eligible_endpoints_are_excluded_with_their_reason(
    fields: dict[str, Any], reason: str
) -> None:
    for role in ("primary", "replica"):
        candidate = Candidate(name="x", role=role, **fields)
        for read_preference in READ_PREFERENCES:
            selection = read([candidate], read_preference)
            assert selection.eligible == ()
            if read_preference in ("primary_preferred", "secondary_preferred", "nearest"):
                # No role rule applies to these, so the reason is the rule itself.
                assert selection.excluded == {"x": reason}
    assert write([primary("x", **fields)]).excluded == {"x": reason}


def test_open_circuit_is_excluded() -> None:
    candidates = [primary("p"), replica("r1"), replica("r2")]

    selection = read(candidates, "nearest", open_circuits={"p", "r2"})

    assert names(selection) == ["r1"]
    assert selection.excluded == {"p": "circuit open", "r2": "circuit open"}
    assert write(candidates, open_circuits={"p"}).excluded["p"] == "circuit open"


@pytest.mark.parametrize("state", ["unknown", "healthy", "degraded"])
def test_unknown_healthy_and_degraded_are_eligible(state: str) -> None:
    assert names(write([primary("p", state=state)])) == ["p"]
    assert names(read([replica("r", state=state)], "secondary")) == ["r"]


def test_the_first_failing_rule_is_the_reason() -> None:
    candidate = replica("r", enabled=False, weight=0, state="down", in_recovery=False)

    assert read([candidate], open_circuits={"r"}).excluded == {"r": "disabled"}
    assert read([replica("r", weight=0, state="down")]).excluded == {"r": "weight 0"}
    assert read([replica("r", state="down")], open_circuits={"r"}).excluded == {"r": "down"}


# Writes


def test_writes_go_to_the_primary_only() -> None:
    selection = write([replica("r1"), primary("p"), replica("r2")])

    assert names(selection) == ["p"]
    assert selection.excluded == {
        "r1": "not a primary (writes go to the primary)",
        "r2": "not a primary (writes go to the primary)",
    }


def test_writes_never_go_to_a_replica_even_when_the_primary_is_unavailable() -> None:
    selection = write([primary("p", state="down"), replica("r", in_recovery=False)])

    assert selection.eligible == ()
    assert selection.excluded == {"p": "down", "r": "not a primary (writes go to the primary)"}


@pytest.mark.parametrize(("in_recovery", "eligible"), [(None, True), (False, True), (True, False)])
def test_writes_skip_a_primary_observed_in_recovery(
    in_recovery: bool | None, eligible: bool
) -> None:
    selection = write([primary("p", in_recovery=in_recovery)])

    assert bool(selection.eligible) is eligible
    if not eligible:
        assert selection.excluded == {"p": "registered as primary but in recovery"}


@pytest.mark.parametrize("read_preference", READ_PREFERENCES)
def test_writes_ignore_the_read_preference(read_preference: str) -> None:
    selection = select_eligible(
        [replica("r"), primary("p")],
        intent="write",
        read_preference=read_preference,
        max_lag_s=None,
    )

    assert names(selection) == ["p"]


def test_writes_ignore_the_lag_bound_and_accept_any_read_preference_string() -> None:
    selection = select_eligible(
        [primary("p", lag_s=100.0)], intent="write", read_preference="bogus", max_lag_s=1.0
    )

    assert names(selection) == ["p"]


# Reads: replica and primary consistency, lag


def test_replica_answering_as_primary_is_not_read_from() -> None:
    selection = read([replica("r1", in_recovery=False), replica("r2", in_recovery=True)])

    assert names(selection) == ["r2"]
    assert selection.excluded == {"r1": "registered as replica but not in recovery"}


def test_replica_with_unknown_recovery_is_read_from() -> None:
    assert names(read([replica("r", in_recovery=None)], "secondary")) == ["r"]


def test_primary_in_recovery_is_not_read_from() -> None:
    selection = read([primary("p", in_recovery=True), replica("r")], "primary_preferred")

    assert names(selection) == ["r"]
    assert selection.excluded == {"p": "registered as primary but in recovery"}


def test_replica_over_the_lag_bound_is_excluded_with_the_numbers() -> None:
    candidates = [replica("r1", lag_s=12.3), replica("r2", lag_s=10.0), replica("r3")]

    selection = read(candidates, "secondary", max_lag_s=10.0)

    # r2 is exactly at the bound (allowed); r3's lag is unknown, so nothing says it lags.
    assert names(selection) == ["r2", "r3"]
    assert selection.excluded == {"r1": "replication lag 12.3 s over the 10 s bound"}


def test_lag_reason_never_rounds_the_lag_down_to_the_bound() -> None:
    selection = read([replica("r", lag_s=10.04)], "secondary", max_lag_s=10.0)

    assert selection.excluded == {"r": "replication lag 10.04 s over the 10 s bound"}


def test_sub_second_lag_bound_is_readable() -> None:
    selection = read([replica("r", lag_s=0.75)], "secondary", max_lag_s=0.5)

    assert selection.excluded == {"r": "replication lag 0.75 s over the 0.5 s bound"}


def test_no_lag_bound_admits_any_lag() -> None:
    assert names(read([replica("r", lag_s=1e9)], "secondary", max_lag_s=None)) == ["r"]


def test_zero_lag_bound_admits_only_replicas_fully_caught_up() -> None:
    selection = read(
        [replica("r1", lag_s=0.0), replica("r2", lag_s=0.2)], "secondary", max_lag_s=0.0
    )

    assert names(selection) == ["r1"]
    assert selection.excluded == {"r2": "replication lag 0.2 s over the 0 s bound"}


def test_lag_bound_does_not_apply_to_the_primary() -> None:
    assert names(read([primary("p", lag_s=99.0)], "primary", max_lag_s=1.0)) == ["p"]


# Read preferences

CLUSTER = (primary("p"), replica("r1"), replica("r2"))


def test_read_preference_primary() -> None:
    selection = read(CLUSTER, "primary")

    assert names(selection) == ["p"]
    assert selection.excluded == {
        "r1": "not a primary (read preference primary)",
        "r2": "not a primary (read preference primary)",
    }


def test_read_preference_primary_has_no_fallback() -> None:
    selection = read([primary("p", state="down"), replica("r1")], "primary")

    assert selection.eligible == ()
    assert selection.excluded == {"p": "down", "r1": "not a primary (read preference primary)"}


def test_read_preference_primary_preferred_uses_the_primary_when_available() -> None:
    selection = read(CLUSTER, "primary_preferred")

    assert names(selection) == ["p"]
    assert selection.excluded == {
        "r1": "primary preferred and available",
        "r2": "primary preferred and available",
    }


def test_read_preference_primary_preferred_falls_back_to_replicas() -> None:
    candidates = [primary("p", state="down"), replica("r1"), replica("r2", lag_s=30.0)]

    selection = read(candidates, "primary_preferred", max_lag_s=10.0)

    assert names(selection) == ["r1"]
    assert selection.excluded == {"p": "down", "r2": "replication lag 30 s over the 10 s bound"}


def test_read_preference_secondary() -> None:
    selection = read(CLUSTER, "secondary")

    assert names(selection) == ["r1", "r2"]
    assert selection.excluded == {"p": "not a replica (read preference secondary)"}


def test_read_preference_secondary_has_no_fallback() -> None:
    selection = read([primary("p"), replica("r1", enabled=False)], "secondary")

    assert selection.eligible == ()
    assert selection.excluded == {
        "p": "not a replica (read preference secondary)",
        "r1": "disabled",
    }


def test_read_preference_secondary_preferred_uses_replicas_when_available() -> None:
    selection = read(CLUSTER, "secondary_preferred")

    assert names(selection) == ["r1", "r2"]
    assert selection.excluded == {"p": "replicas preferred and available"}


def test_read_preference_secondary_preferred_falls_back_to_the_primary() -> None:
    candidates = [replica("r1", state="down"), primary("p"), replica("r2", lag_s=11.0)]

    selection = read(candidates, "secondary_preferred", max_lag_s=10.0)

    assert names(selection) == ["p"]
    assert selection.excluded == {"r1": "down", "r2": "replication lag 11 s over the 10 s bound"}


def test_read_preference_nearest_without_latencies_keeps_everything() -> None:
    selection = read(CLUSTER, "nearest")

    assert names(selection) == ["p", "r1", "r2"]
    assert selection.excluded == {}


def test_nearest_keeps_endpoints_within_the_window_of_the_fastest() -> None:
    candidates = [
        primary("p", latency_ms=20.0),
        replica("r1", latency_ms=3.1),
        replica("r2", latency_ms=18.1),  # 3.1 + 15 = 18.1: on the edge, kept
        replica("r3", latency_ms=18.2),
    ]

    selection = read(candidates, "nearest")

    assert names(selection) == ["r1", "r2"]
    assert selection.excluded == {
        "p": "outside the 15 ms latency window of the fastest (3.1 ms)",
        "r3": "outside the 15 ms latency window of the fastest (3.1 ms)",
    }


def test_nearest_prefers_observed_latency_over_probe_latency() -> None:
    candidates = [replica("r1", latency_ms=1.0), replica("r2", latency_ms=50.0)]

    # The probes say r1 is fast, but the queries this process ran say otherwise.
    selection = read(candidates, "nearest", observed_latency_ms={"r1": 40.0, "r2": 2.0})

    assert names(selection) == ["r2"]
    assert selection.excluded == {"r1": "outside the 15 ms latency window of the fastest (2 ms)"}


def test_nearest_falls_back_to_probe_latency_per_endpoint() -> None:
    candidates = [replica("r1", latency_ms=1.0), replica("r2", latency_ms=2.0)]

    # Only r2 has an observed latency; r1 still competes with its probe latency.
    selection = read(candidates, "nearest", observed_latency_ms={"r2": 30.0})

    assert names(selection) == ["r1"]
    assert set(selection.excluded) == {"r2"}


def test_nearest_keeps_endpoints_with_no_latency_known() -> None:
    candidates = [replica("r1", latency_ms=1.0), replica("r2"), replica("r3", latency_ms=99.0)]

    selection = read(candidates, "nearest")

    assert names(selection) == ["r1", "r2"]
    assert set(selection.excluded) == {"r3"}


def test_nearest_window_is_configurable_and_sub_millisecond_latency_is_readable() -> None:
    candidates = [replica("r1", latency_ms=0.25), replica("r2", latency_ms=1.5)]

    selection = read(candidates, "nearest", nearest_window_ms=0.5)

    assert names(selection) == ["r1"]
    assert selection.excluded == {
        "r2": "outside the 0.5 ms latency window of the fastest (0.25 ms)"
    }


def test_nearest_window_only_compares_otherwise_eligible_endpoints() -> None:
    # The fastest endpoint is down: the window is measured from the fastest eligible one.
    candidates = [replica("r1", latency_ms=0.1, state="down"), replica("r2", latency_ms=30.0)]

    assert names(read(candidates, "nearest")) == ["r2"]


def test_nearest_mixes_roles() -> None:
    candidates = [primary("p", latency_ms=2.0), replica("r1", latency_ms=4.0)]

    assert names(read(candidates, "nearest")) == ["p", "r1"]


def test_unknown_intent_or_read_preference_raises() -> None:
    with pytest.raises(ValueError, match=r"unknown intent 'delete'.*\('read', 'write'\)"):
        select_eligible(CLUSTER, intent="delete", read_preference="nearest", max_lag_s=None)
    with pytest.raises(ValueError, match=r"unknown read preference 'closest'.*nearest"):
        read(CLUSTER, "closest")


def test_eligible_keeps_the_input_order() -> None:
    candidates = [replica("z"), replica("a"), replica("m")]

    assert names(read(candidates, "secondary")) == ["z", "a", "m"]
    assert names(read(list(reversed(candidates)), "secondary")) == ["m", "a", "z"]


def test_empty_candidate_list_selects_nothing() -> None:
    assert read([], "nearest") == Selection(eligible=(), excluded={})
    assert write([]) == Selection(eligible=(), excluded={})


# Avoid: retries move elsewhere when they can


def test_avoid_excludes_endpoints_that_already_failed() -> None:
    selection = read(CLUSTER, "secondary", avoid={"r1"})

    assert names(selection) == ["r2"]
    assert selection.excluded == {
        "p": "not a replica (read preference secondary)",
        "r1": "failed on an earlier attempt",
    }


def test_avoid_moves_a_read_to_the_next_preference_tier() -> None:
    selection = read(CLUSTER, "primary_preferred", avoid={"p"})

    assert names(selection) == ["r1", "r2"]
    assert selection.excluded == {"p": "failed on an earlier attempt"}


def test_avoid_falls_back_to_the_failed_endpoint_when_nothing_else_qualifies() -> None:
    selection = write([primary("p"), replica("r1")], avoid={"p"})

    assert names(selection) == ["p"]
    assert selection.excluded == {"r1": "not a primary (writes go to the primary)"}


def test_avoid_fallback_keeps_the_other_rules() -> None:
    candidates = [replica("r1"), replica("r2", state="down")]

    selection = read(candidates, "secondary", avoid={"r1", "r2"})

    assert names(selection) == ["r1"]
    assert selection.excluded == {"r2": "down"}


def test_avoid_when_everything_failed_returns_all_of_the_preferred_tier() -> None:
    selection = read(CLUSTER, "secondary_preferred", avoid={"p", "r1", "r2"})

    assert names(selection) == ["r1", "r2"]
    assert selection.excluded == {"p": "replicas preferred and available"}


def test_avoid_of_unknown_names_changes_nothing() -> None:
    assert read(CLUSTER, "nearest", avoid={"gone"}) == read(CLUSTER, "nearest")


def test_avoid_applies_before_the_nearest_window() -> None:
    candidates = [replica("fast", latency_ms=1.0), replica("slow", latency_ms=50.0)]

    # The fast replica failed: the retry goes to the slow one rather than nowhere.
    selection = read(candidates, "nearest", avoid={"fast"})

    assert names(selection) == ["slow"]
    assert selection.excluded == {"fast": "failed on an earlier attempt"}


# Exhaustive invariants

PERMISSIVE_READ_PREFERENCES = ("primary_preferred", "secondary_preferred", "nearest")


def _profiles() -> list[dict[str, Any]]:
    """Every combination of the fields that decide eligibility."""
    return [
        {
            "role": role,
            "state": state,
            "enabled": enabled,
            "weight": weight,
            "in_recovery": in_recovery,
            "circuit_open": circuit_open,
        }
        for role, state, enabled, weight, in_recovery, circuit_open in itertools.product(
            ROLES, STATES, (True, False), (0, 1), (None, True, False), (False, True)
        )
    ]


def _fully_eligible(candidate: Candidate, intent: str, circuit_open: bool) -> bool:
    """An independent statement of the rules, for the role the intent can use."""
    if not candidate.enabled or candidate.weight == 0 or circuit_open:
        return False
    if candidate.state in ("down", "fenced"):
        return False
    if candidate.role == "primary":
        return candidate.in_recovery is not True
    return intent == "read" and candidate.in_recovery is not False


def _check_invariants(
    profiles: Sequence[dict[str, Any]], intent: str, read_preference: str, avoid: set[str]
) -> None:
    candidates = [
        Candidate(name=f"e{index}", **{k: v for k, v in profile.items() if k != "circuit_open"})
        for index, profile in enumerate(profiles)
    ]
    open_circuits = {
        candidate.name
        for candidate, profile in zip(candidates, profiles, strict=True)
        if profile["circuit_open"]
    }
    selection = select_eligible(
        candidates,
        intent=intent,
        read_preference=read_preference,
        max_lag_s=10.0,
        open_circuits=open_circuits,
        avoid=avoid,
    )
    context = (intent, read_preference, avoid, profiles)
    eligible_names = names(selection)
    fully = {
        candidate.name: _fully_eligible(candidate, intent, candidate.name in open_circuits)
        for candidate in candidates
    }

    # Every candidate is either eligible or excluded with a reason, never both.
    assert set(eligible_names).isdisjoint(selection.excluded), context
    assert set(eligible_names) | set(selection.excluded) == set(fully), context
    assert all(selection.excluded.values()), context
    # Input order is kept.
    assert eligible_names == [c.name for c in candidates if c.name in eligible_names], context

    # Nothing ineligible is ever selected, and roles follow the intent and preference.
    for candidate in selection.eligible:
        assert fully[candidate.name], context
        if intent == "write" or read_preference == "primary":
            assert candidate.role == "primary", context
        if intent == "read" and read_preference == "secondary":
            assert candidate.role == "replica", context

    # Whenever something can serve the request, the selection is not empty.
    if intent == "write" or read_preference == "primary":
        usable_roles = {"primary"}
    elif read_preference == "secondary":
        usable_roles = {"replica"}
    else:
        usable_roles = {"primary", "replica"}
    if any(fully[c.name] and c.role in usable_roles for c in candidates):
        assert selection.eligible, context

    # Preferred tiers win when they have anything to offer. Endpoints to avoid count only
    # when nothing else is left (then the selection is made as if there were none).
    if intent == "read" and read_preference in ("primary_preferred", "secondary_preferred"):
        preferred = "primary" if read_preference == "primary_preferred" else "replica"
        offered = {name for name, ok in fully.items() if ok and name not in avoid}
        if not offered:
            offered = {name for name, ok in fully.items() if ok}
        if any(c.name in offered and c.role == preferred for c in candidates):
            assert {c.role for c in selection.eligible} == {preferred}, context

    # avoid only ever removes endpoints, and gives up only when nothing else is left.
    if avoid:
        without_avoid = select_eligible(
            candidates,
            intent=intent,
            read_preference=read_preference,
            max_lag_s=10.0,
            open_circuits=open_circuits,
        )
        if avoid & set(eligible_names):
            assert selection == without_avoid, context
        else:
            for name in avoid & set(names(without_avoid)):
                assert selection.excluded[name] == "failed on an earlier attempt", context


def test_invariants_hold_for_every_single_endpoint_configuration() -> None:
    for profile in _profiles():
        for intent, read_preference in _intents_and_preferences():
            for avoid in (set(), {"e0"}):
                _check_invariants([profile], intent, read_preference, avoid)


def test_invariants_hold_for_every_pair_of_endpoint_configurations() -> None:
    profiles = _profiles()
    for first, second in itertools.product(profiles, repeat=2):
        for intent, read_preference in _intents_and_preferences():
            _check_invariants([first, second], intent, read_preference, {"e0"})


def _intents_and_preferences() -> list[tuple[str, str]]:
    return [("write", "primary"), *(("read", pref) for pref in READ_PREFERENCES)]


def test_permissive_preferences_select_something_whenever_one_endpoint_qualifies() -> None:
    for profile in _profiles():
        candidate = Candidate(
            name="e0", **{k: v for k, v in profile.items() if k != "circuit_open"}
        )
        open_circuits = {"e0"} if profile["circuit_open"] else set()
        for read_preference in PERMISSIVE_READ_PREFERENCES:
            selection = read([candidate], read_preference, open_circuits=open_circuits)
            expected = _fully_eligible(candidate, "read", profile["circuit_open"])
            assert bool(selection.eligible) is expected, (profile, read_preference)


# Round robin

ABC = (replica("a"), replica("b"), replica("c"))


def test_round_robin_cycles_in_order() -> None:
    counter = 0
    picked = []
    for _ in range(7):
        choice, counter = pick_round_robin(ABC, counter)
        picked.append(choice.name)

    assert picked == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_counter_stays_bounded_and_survives_a_shrinking_set() -> None:
    choice, counter = pick_round_robin(ABC, 2)
    assert (choice.name, counter) == ("c", 3)

    choice, counter = pick_round_robin(ABC[:2], counter)
    assert (choice.name, counter) == ("b", 2)

    choice, counter = pick_round_robin(ABC[:2], 10**18 + 1)
    assert (choice.name, counter) == ("b", 2)


def test_balancer_round_robin_spreads_evenly() -> None:
    balancer = Balancer("round_robin")

    counts = Counter(balancer.pick(ABC).name for _ in range(3000))

    assert counts == {"a": 1000, "b": 1000, "c": 1000}


# Smooth weighted round robin


def _smooth_sequence(weights: dict[str, int], picks: int) -> list[str]:
    eligible = [replica(name, weight=weight) for name, weight in weights.items()]
    state: dict[str, int] = {}
    sequence = []
    for _ in range(picks):
        choice, state = pick_smooth_weighted(eligible, state)
        sequence.append(choice.name)
    return sequence


def test_smooth_weighted_matches_nginx_for_5_1_1() -> None:
    assert _smooth_sequence({"a": 5, "b": 1, "c": 1}, 7) == ["a", "a", "b", "a", "c", "a", "a"]


def test_smooth_weighted_state_returns_to_zero_after_each_cycle() -> None:
    eligible = [replica("a", weight=5), replica("b", weight=1), replica("c", weight=1)]
    state: dict[str, int] = {}
    for _ in range(7):
        _, state = pick_smooth_weighted(eligible, state)

    assert state == {"a": 0, "b": 0, "c": 0}


@pytest.mark.parametrize(
    "weights",
    [{"a": 5, "b": 1, "c": 1}, {"a": 3, "b": 1}, {"a": 100, "b": 37, "c": 1}, {"a": 2, "b": 2}],
)
def test_smooth_weighted_is_exact_within_every_cycle(weights: dict[str, int]) -> None:
    cycle = sum(weights.values())
    sequence = _smooth_sequence(weights, 1000 - 1000 % cycle)

    for start in range(0, len(sequence), cycle):
        assert Counter(sequence[start : start + cycle]) == weights


def test_smooth_weighted_over_1000_picks_is_within_one_of_the_exact_share() -> None:
    weights = {"a": 5, "b": 1, "c": 1}
    counts = Counter(_smooth_sequence(weights, 1000))

    for name, weight in weights.items():
        assert abs(counts[name] - 1000 * weight / 7) < weight + 1


def test_smooth_weighted_max_burst_for_2_1_is_2() -> None:
    sequence = _smooth_sequence({"a": 2, "b": 1}, 3000)

    longest = max(len(list(run)) for _, run in itertools.groupby(sequence))
    assert longest == 2


def test_smooth_weighted_never_bursts_beyond_the_weight() -> None:
    # Weights 4/1 give a a b a a per cycle: across cycle boundaries the heavy endpoint
    # runs 4 long at most, and the light one is never picked twice in a row.
    sequence = _smooth_sequence({"heavy": 4, "light": 1}, 500)

    runs = [(name, len(list(run))) for name, run in itertools.groupby(sequence)]
    assert max(length for name, length in runs if name == "heavy") <= 4
    assert max(length for name, length in runs if name == "light") == 1


def test_smooth_weighted_new_names_start_at_zero_and_gone_names_are_dropped() -> None:
    eligible = [replica("a", weight=1), replica("new", weight=3)]

    choice, state = pick_smooth_weighted(eligible, {"a": 2, "gone": -5})

    # a: 2 + 1 = 3, new: 0 + 3 = 3: tie, the first wins and pays the total (4).
    assert choice.name == "a"
    assert state == {"a": -1, "new": 3}


def test_weight_zero_endpoints_are_excluded_before_smooth_weighting() -> None:
    candidates = [replica("a", weight=3), replica("b", weight=1), replica("c", weight=0)]
    selection = read(candidates, "secondary")
    balancer = Balancer("weighted_round_robin")

    counts = Counter(balancer.pick(selection.eligible).name for _ in range(1000))

    assert selection.excluded == {"c": "weight 0"}
    assert counts == {"a": 750, "b": 250}


def test_smooth_weighted_with_all_weights_zero_picks_the_first() -> None:
    eligible = [replica("a", weight=0), replica("b", weight=0)]

    assert {pick_smooth_weighted(eligible, {})[0].name for _ in range(5)} == {"a"}


def test_balancer_smooth_weighted_is_exact_across_threads() -> None:
    weights = {"a": 5, "b": 2, "c": 1}
    eligible = [replica(name, weight=weight) for name, weight in weights.items()]
    balancer = Balancer("weighted_round_robin")
    threads_count, picks_per_thread = 8, 10_000
    per_thread: list[Counter[str]] = [Counter() for _ in range(threads_count)]
    start = threading.Barrier(threads_count)

    def run(counts: Counter[str]) -> None:
        start.wait()
        for _ in range(picks_per_thread):
            counts[balancer.pick(eligible).name] += 1

    threads = [threading.Thread(target=run, args=(counts,)) for counts in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    total: Counter[str] = sum(per_thread, Counter())
    cycles = threads_count * picks_per_thread // sum(weights.values())
    assert total == {name: weight * cycles for name, weight in weights.items()}


def test_balancer_round_robin_is_exact_across_threads() -> None:
    balancer = Balancer("round_robin")
    results: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        local = [balancer.pick(ABC).name for _ in range(3000)]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert Counter(results) == {"a": 4000, "b": 4000, "c": 4000}


# Least connections


def test_least_connections_picks_the_fewest_in_use() -> None:
    assert pick_least_connections(ABC, {"a": 4, "b": 1, "c": 2}).name == "b"


def test_least_connections_counts_missing_names_as_zero() -> None:
    assert pick_least_connections(ABC, {"a": 1, "b": 1}).name == "c"


def test_least_connections_ties_go_to_the_higher_weight_then_input_order() -> None:
    eligible = [replica("a", weight=1), replica("b", weight=5), replica("c", weight=5)]

    assert pick_least_connections(eligible, {}).name == "b"
    assert pick_least_connections(eligible, {"b": 1}).name == "c"
    assert pick_least_connections(ABC, {}).name == "a"


def test_balancer_least_connections_uses_in_use() -> None:
    balancer = Balancer("least_connections")

    assert balancer.pick(ABC, in_use={"a": 3, "b": 0, "c": 1}).name == "b"


# Weighted random


def test_weighted_random_is_proportional_to_weight() -> None:
    weights = {"a": 5, "b": 3, "c": 2}
    eligible = [replica(name, weight=weight) for name, weight in weights.items()]
    rng = random.Random(20240601)
    picks = 20_000

    counts = Counter(pick_weighted_random(eligible, rng).name for _ in range(picks))

    for name, weight in weights.items():
        expected = picks * weight / sum(weights.values())
        assert abs(counts[name] - expected) <= 0.05 * expected, (name, counts)


def test_weighted_random_is_reproducible_with_a_seed() -> None:
    eligible = [replica("a", weight=1), replica("b", weight=1)]
    rng_one, rng_two = random.Random(7), random.Random(7)

    assert [pick_weighted_random(eligible, rng_one).name for _ in range(50)] == [
        pick_weighted_random(eligible, rng_two).name for _ in range(50)
    ]


def test_weighted_random_never_picks_weight_zero_among_weighted() -> None:
    eligible = [replica("a", weight=0), replica("b", weight=1)]
    rng = random.Random(1)

    assert {pick_weighted_random(eligible, rng).name for _ in range(200)} == {"b"}


def test_weighted_random_with_all_weights_zero_is_uniform() -> None:
    eligible = [replica("a", weight=0), replica("b", weight=0)]
    rng = random.Random(3)

    counts = Counter(pick_weighted_random(eligible, rng).name for _ in range(2000))

    assert 900 <= counts["a"] <= 1100


def test_balancer_random_uses_its_rng() -> None:
    eligible = [replica("a"), replica("b"), replica("c")]
    one = Balancer("random", rng=random.Random(11))
    two = Balancer("random", rng=random.Random(11))

    assert [one.pick(eligible).name for _ in range(100)] == [
        two.pick(eligible).name for _ in range(100)
    ]


# Response time


def test_blended_latency_weights_observed_over_probe() -> None:
    candidate = replica("a", latency_ms=10.0)

    assert blended_latency_ms(candidate, {"a": 20.0}) == pytest.approx(0.7 * 20 + 0.3 * 10)
    assert blended_latency_ms(candidate, {}) == 10.0
    assert blended_latency_ms(replica("a"), {"a": 4.0}) == 4.0
    assert blended_latency_ms(replica("a"), {}) == 0.0


def test_response_time_picks_the_lowest_blend() -> None:
    eligible = [replica("a", latency_ms=1.0), replica("b", latency_ms=10.0)]

    # a: 0.7 * 30 + 0.3 * 1 = 21.3; b: 0.7 * 5 + 0.3 * 10 = 6.5
    assert pick_response_time(eligible, {"a": 30.0, "b": 5.0}).name == "b"
    assert pick_response_time(eligible, {}).name == "a"


def test_response_time_tries_an_unmeasured_endpoint_first() -> None:
    eligible = [replica("a", latency_ms=0.2), replica("new")]

    assert pick_response_time(eligible, {"a": 0.1}).name == "new"


def test_response_time_ties_go_to_the_higher_weight_then_input_order() -> None:
    eligible = [
        replica("a", latency_ms=5.0, weight=1),
        replica("b", latency_ms=5.0, weight=9),
        replica("c", latency_ms=5.0, weight=9),
    ]

    assert pick_response_time(eligible, {}).name == "b"
    assert pick_response_time(eligible[:1] + eligible[2:], {}).name == "c"
    assert pick_response_time(ABC, {}).name == "a"


def test_balancer_response_time_uses_observed_latency() -> None:
    balancer = Balancer("response_time")

    assert balancer.pick(ABC, observed_latency_ms={"a": 9.0, "b": 3.0, "c": 4.0}).name == "b"


# Health based


def test_health_based_picks_the_highest_score() -> None:
    eligible = [replica("a", health_score=70), replica("b", health_score=95), replica("c")]

    assert pick_health_based(eligible).name == "b"


def test_health_based_counts_an_unscored_endpoint_as_50() -> None:
    assert pick_health_based([replica("a", health_score=49), replica("b")]).name == "b"
    assert pick_health_based([replica("a", health_score=51), replica("b")]).name == "a"


def test_health_based_ties_go_to_the_higher_weight_then_input_order() -> None:
    eligible = [
        replica("a", health_score=80, weight=10),
        replica("b", health_score=80, weight=20),
        replica("c", health_score=80, weight=20),
        replica("d", weight=99),  # counts as 50: loses despite its weight
    ]

    assert pick_health_based(eligible).name == "b"
    assert pick_health_based([replica("x", health_score=50), replica("y")]).name == "x"


def test_balancer_health_based() -> None:
    balancer = Balancer("health_based")

    assert balancer.pick([replica("a", health_score=10), replica("b", health_score=90)]).name == (
        "b"
    )


# Balancer: strategy handling and errors


def test_unknown_strategy_raises_naming_it_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'fastest'") as raised:
        Balancer("fastest")

    for strategy in STRATEGIES:
        assert strategy in str(raised.value)


def test_unknown_strategy_on_reassignment_raises_and_keeps_the_old_one() -> None:
    balancer = Balancer("round_robin")

    with pytest.raises(ValueError, match="unknown load balancing strategy 'sticky'"):
        balancer.strategy = "sticky"
    assert balancer.strategy == "round_robin"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_rejects_an_empty_eligible_list(strategy: str) -> None:
    with pytest.raises(ValueError, match="no eligible endpoint to pick from"):
        Balancer(strategy).pick([])


@pytest.mark.parametrize(
    "pick",
    [
        lambda: pick_round_robin([], 0),
        lambda: pick_smooth_weighted([], {}),
        lambda: pick_least_connections([], {}),
        lambda: pick_weighted_random([], random.Random(0)),
        lambda: pick_response_time([], {}),
        lambda: pick_health_based([]),
    ],
)
def test_pure_strategies_reject_an_empty_eligible_list(pick: Any) -> None:
    with pytest.raises(ValueError, match="no eligible endpoint to pick from"):
        pick()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_picks_a_single_endpoint(strategy: str) -> None:
    only = replica("only")

    assert Balancer(strategy, rng=random.Random(0)).pick([only]) is only


def test_changing_the_strategy_resets_the_rotation() -> None:
    balancer = Balancer("round_robin")
    assert [balancer.pick(ABC).name for _ in range(2)] == ["a", "b"]

    balancer.strategy = "weighted_round_robin"
    balancer.strategy = "round_robin"

    assert balancer.strategy == "round_robin"
    assert balancer.pick(ABC).name == "a"


def test_reapplying_the_same_strategy_keeps_the_rotation() -> None:
    balancer = Balancer("round_robin")
    assert balancer.pick(ABC).name == "a"

    balancer.set_strategy("round_robin")

    assert balancer.pick(ABC).name == "b"


def test_switching_strategy_changes_how_picks_are_made() -> None:
    balancer = Balancer("round_robin")
    eligible = [replica("a", health_score=10), replica("b", health_score=90)]

    balancer.set_strategy("health_based")

    assert [balancer.pick(eligible).name for _ in range(3)] == ["b", "b", "b"]
