"""endpoints.core.scoring: the health score and state rules, over plain values."""

from __future__ import annotations

import itertools

import pytest

from endpoints.core.scoring import (
    health_score,
    lag_over_bound,
    lag_penalty,
    latency_penalty,
    next_state,
    role_mismatch,
    saturation_penalty,
)

LATENCIES = [None, 0.0, 0.5, 5.0, 100.0, 250.0, 499.9, 500.0, 501.0, 5000.0]
LAGS = [None, 0.0, 0.1, 2.5, 5.0, 9.99, 10.0, 10.01, 60.0, 1e6]
BOUNDS = [None, 0.0, 1.0, 10.0]
CONNECTIONS = [(None, None), (0, 100), (10, 100), (50, 100), (75, 100), (99, 100), (100, 100)]


def score(**kwargs: object) -> int:
    values: dict[str, object] = {"ok": True, "degraded_latency_ms": 500.0, "max_lag_s": 10.0}
    values.update(kwargs)
    return health_score(**values)  # type: ignore[arg-type]


# The documented landmarks


def test_a_failed_probe_scores_zero_whatever_else_was_measured() -> None:
    assert score(ok=False) == 0
    assert score(ok=False, latency_ms=1.0, lag_s=0.0, connections_in_use=1) == 0


def test_a_fast_idle_caught_up_endpoint_scores_100() -> None:
    assert score() == 100
    assert score(latency_ms=0.0, lag_s=0.0, connections_in_use=3, max_connections=100) == 100
    assert score(latency_ms=1.0) == 100  # 0.06 points, rounded away


@pytest.mark.parametrize(
    ("latency_ms", "expected"),
    [(5.0, 100), (50.0, 97), (250.0, 85), (500.0, 70), (750.0, 70), (1e9, 70)],
)
def test_latency_costs_up_to_30_points_at_the_degraded_latency(
    latency_ms: float, expected: int
) -> None:
    assert score(latency_ms=latency_ms) == expected


@pytest.mark.parametrize(
    ("lag_s", "expected"), [(0.0, 100), (2.5, 90), (5.0, 80), (10.0, 60), (30.0, 60)]
)
def test_lag_costs_up_to_40_points_at_the_bound(lag_s: float, expected: int) -> None:
    assert score(lag_s=lag_s) == expected


def test_lag_costs_nothing_without_a_bound_or_a_measurement() -> None:
    assert score(lag_s=1e6, max_lag_s=None) == 100
    assert score(lag_s=None) == 100


def test_a_zero_bound_tolerates_no_lag() -> None:
    assert score(lag_s=0.0, max_lag_s=0.0) == 100
    assert score(lag_s=0.001, max_lag_s=0.0) == 60


@pytest.mark.parametrize(
    ("in_use", "expected"), [(0, 100), (50, 100), (60, 94), (75, 85), (90, 76), (100, 70)]
)
def test_saturation_costs_up_to_30_points_past_half_the_connections(
    in_use: int, expected: int
) -> None:
    assert score(connections_in_use=in_use, max_connections=100) == expected


def test_unknown_connection_counts_cost_nothing() -> None:
    assert score(connections_in_use=None, max_connections=100) == 100
    assert score(connections_in_use=50, max_connections=None) == 100
    assert score(connections_in_use=50, max_connections=0) == 100


def test_the_penalties_add_up_and_bottom_out_at_zero() -> None:
    assert score(latency_ms=250.0, lag_s=5.0, connections_in_use=75, max_connections=100) == 50
    assert score(latency_ms=500.0, lag_s=10.0, connections_in_use=100, max_connections=100) == 0


def test_every_combination_scores_within_0_to_100_and_never_rises_as_things_worsen() -> None:
    for latency, lag, bound, (in_use, maximum) in itertools.product(
        LATENCIES, LAGS, BOUNDS, CONNECTIONS
    ):
        value = score(
            latency_ms=latency,
            lag_s=lag,
            max_lag_s=bound,
            connections_in_use=in_use,
            max_connections=maximum,
        )
        assert 0 <= value <= 100
        assert isinstance(value, int)
    for values in (LATENCIES[1:], LAGS[1:]):
        key = "latency_ms" if values is LATENCIES[1:] else "lag_s"
        scores = [score(**{key: v}) for v in values]
        assert scores == sorted(scores, reverse=True), (key, scores)
    in_use_scores = [score(connections_in_use=n, max_connections=100) for n in range(101)]
    assert in_use_scores == sorted(in_use_scores, reverse=True)


def test_penalties_are_fractions() -> None:
    assert latency_penalty(None, 500.0) == 0.0
    assert latency_penalty(250.0, 500.0) == 0.5
    assert latency_penalty(10.0, 0.0) == 0.0  # no degraded latency set: nothing to compare
    assert lag_penalty(5.0, 10.0) == 0.5
    assert lag_penalty(-1.0, 10.0) == 0.0
    assert saturation_penalty(75, 100) == 0.5
    assert saturation_penalty(200, 100) == 1.0


# Lag bound and role mismatch


@pytest.mark.parametrize(
    ("lag_s", "bound", "over"),
    [
        (None, 10.0, False),
        (10.0, None, False),
        (10.0, 10.0, False),
        (10.01, 10.0, True),
        (0.0, 0.0, False),
        (0.1, 0.0, True),
    ],
)
def test_lag_over_bound_matches_the_router(lag_s: float | None, bound: float | None, over: bool):
    assert lag_over_bound(lag_s, bound) is over


@pytest.mark.parametrize(
    ("role", "in_recovery", "mismatch"),
    [
        ("primary", False, False),
        ("primary", True, True),
        ("replica", True, False),
        ("replica", False, True),
        ("primary", None, False),
        ("replica", None, False),
    ],
)
def test_role_mismatch(role: str, in_recovery: bool | None, mismatch: bool) -> None:
    assert role_mismatch(role, in_recovery) is mismatch


# State


STATES = ["unknown", "healthy", "degraded", "down", "fenced"]


@pytest.mark.parametrize("current", STATES)
def test_fenced_stays_fenced_and_nothing_else_becomes_fenced(current: str) -> None:
    for ok, failures in itertools.product([True, False], range(5)):
        state = next_state(
            current,
            ok=ok,
            consecutive_failures=failures,
            threshold=3,
            latency_ms=900.0,
            degraded_latency_ms=500.0,
        )
        assert (state == "fenced") is (current == "fenced")


@pytest.mark.parametrize("current", ["unknown", "healthy", "degraded", "down"])
def test_an_answer_is_healthy_unless_slow_or_lagging(current: str) -> None:
    def after(**kwargs: float | None) -> str:
        return next_state(
            current,
            ok=True,
            consecutive_failures=0,
            threshold=3,
            degraded_latency_ms=500.0,
            max_lag_s=10.0,
            **kwargs,
        )

    assert after(latency_ms=2.0, lag_s=0.0) == "healthy"
    assert after(latency_ms=500.0, lag_s=10.0) == "healthy"  # at the bounds, not over
    assert after(latency_ms=500.1) == "degraded"
    assert after(latency_ms=2.0, lag_s=10.5) == "degraded"
    assert after(latency_ms=None, lag_s=None) == "healthy"


@pytest.mark.parametrize("current", ["unknown", "healthy", "degraded", "down"])
def test_failures_keep_the_state_until_the_threshold_then_down(current: str) -> None:
    for failures in (1, 2):
        assert next_state(current, ok=False, consecutive_failures=failures, threshold=3) == current
    assert next_state(current, ok=False, consecutive_failures=3, threshold=3) == "down"
    assert next_state(current, ok=False, consecutive_failures=30, threshold=3) == "down"
    assert next_state(current, ok=False, consecutive_failures=1, threshold=1) == "down"


def test_a_walk_through_an_outage() -> None:
    """healthy -> (2 failures) healthy -> down -> back: healthy, as a sweep sees it."""
    state, failures, seen = "unknown", 0, []
    for ok in [True, False, False, False, False, True]:
        failures = 0 if ok else failures + 1
        state = next_state(state, ok=ok, consecutive_failures=failures, threshold=3)
        seen.append(state)
    assert seen == ["healthy", "healthy", "healthy", "down", "down", "healthy"]
