"""Properties of the pure rules in endpoints.core, checked over random inputs with hypothesis.

Balancing (who may serve a request, who is picked), retry delays, health scores and JSON
shaping: each test states one rule that must hold for every input, not just the examples in
the module's own test file. No server, no I/O; each runs hypothesis's default 100 examples.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.range import Range

from endpoints.core.balancing import Balancer, Candidate, Selection, select_eligible
from endpoints.core.jsonsafe import shape_rows, to_json
from endpoints.core.retry import RetryPolicy, retry_delay_s
from endpoints.core.scoring import health_score
from endpoints.core.vocabulary import Intent, ReadPreference, Role, State, Strategy

# Balancing

finite_s = st.floats(min_value=0, max_value=1e4, allow_nan=False)
maybe_finite_s = st.none() | finite_s


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    """Up to eight endpoints of any role, state, weight, recovery, lag, latency and score."""
    names = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8))
    return [
        Candidate(
            name=name,
            role=draw(st.sampled_from(Role)),
            enabled=draw(st.booleans()),
            state=draw(st.sampled_from(State)),
            weight=draw(st.integers(min_value=0, max_value=200)),
            in_recovery=draw(st.none() | st.booleans()),
            lag_s=draw(maybe_finite_s),
            latency_ms=draw(maybe_finite_s),
            health_score=draw(st.none() | st.integers(min_value=0, max_value=100)),
        )
        for name in names
    ]


@st.composite
def requests(draw: st.DrawFn) -> tuple[list[Candidate], dict[str, Any]]:
    """Candidates and the keyword arguments of one select_eligible call over them."""
    pool = draw(candidates())
    names = [candidate.name for candidate in pool]
    arguments = {
        "intent": draw(st.sampled_from([Intent.READ, Intent.WRITE])),
        "read_preference": draw(st.sampled_from(ReadPreference)),
        "max_lag_s": draw(maybe_finite_s),
        "open_circuits": draw(st.sets(st.sampled_from(names))) if names else set(),
        "avoid": draw(st.sets(st.sampled_from(names))) if names else set(),
        "observed_latency_ms": draw(
            st.dictionaries(st.sampled_from(names), finite_s) if names else st.just({})
        ),
        "nearest_window_ms": draw(st.floats(min_value=0, max_value=100)),
    }
    return pool, arguments


@given(requests())
def test_select_eligible_never_returns_an_endpoint_that_may_not_serve(
    request_: tuple[list[Candidate], dict[str, Any]],
) -> None:
    pool, arguments = request_
    selection = select_eligible(pool, **arguments)
    assert isinstance(selection, Selection)
    for candidate in selection.eligible:
        assert candidate.enabled
        assert candidate.weight > 0
        assert candidate.state not in (State.DOWN, State.FENCED)
        assert candidate.name not in arguments["open_circuits"]
        if arguments["intent"] == Intent.WRITE:
            assert candidate.role == Role.PRIMARY
            assert candidate.in_recovery is not True
        elif candidate.role == Role.REPLICA:
            assert candidate.in_recovery is not False
            max_lag_s = arguments["max_lag_s"]
            assert max_lag_s is None or candidate.lag_s is None or candidate.lag_s <= max_lag_s


@given(requests())
def test_every_candidate_is_either_eligible_or_excluded_with_a_reason(
    request_: tuple[list[Candidate], dict[str, Any]],
) -> None:
    pool, arguments = request_
    selection = select_eligible(pool, **arguments)
    eligible = {candidate.name for candidate in selection.eligible}
    assert eligible.isdisjoint(selection.excluded)
    assert eligible | set(selection.excluded) == {candidate.name for candidate in pool}
    assert all(reason for reason in selection.excluded.values())
    # Input order is kept.
    order = [candidate.name for candidate in pool if candidate.name in eligible]
    assert [candidate.name for candidate in selection.eligible] == order


@given(
    requests(),
    st.sampled_from(Strategy),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=0, max_value=2**32),
)
def test_a_balancer_only_picks_among_the_eligible(
    request_: tuple[list[Candidate], dict[str, Any]],
    strategy: Strategy,
    picks: int,
    seed: int,
) -> None:
    pool, arguments = request_
    eligible = select_eligible(pool, **arguments).eligible
    if not eligible:
        return
    rng = random.Random(seed)
    balancer = Balancer(strategy, rng=rng)
    in_use = {candidate.name: rng.randrange(5) for candidate in eligible}
    for _ in range(picks):
        chosen = balancer.pick(
            eligible, in_use=in_use, observed_latency_ms=arguments["observed_latency_ms"]
        )
        assert chosen in eligible


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6), st.integers(1, 3))
def test_weighted_round_robin_picks_each_endpoint_weight_times_per_cycle(
    weights: list[int], cycles: int
) -> None:
    eligible = [
        Candidate(name=f"e{index}", role=Role.REPLICA, weight=weight)
        for index, weight in enumerate(weights)
    ]
    balancer = Balancer(Strategy.WEIGHTED_ROUND_ROBIN)
    for _ in range(cycles):
        picks = Counter(balancer.pick(eligible).name for _ in range(sum(weights)))
        assert picks == {candidate.name: candidate.weight for candidate in eligible}


# Retry delays

policies = st.builds(
    RetryPolicy,
    strategy=st.sampled_from(["fixed", "exponential", "linear"]),
    max_attempts=st.integers(min_value=1, max_value=10),
    initial_delay_ms=st.integers(min_value=0, max_value=10_000),
    max_delay_ms=st.integers(min_value=0, max_value=60_000),
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    increment_ms=st.integers(min_value=0, max_value=10_000),
)
retry_numbers = st.integers(min_value=1, max_value=5_000)


@given(policies, retry_numbers, st.integers(min_value=0, max_value=2**32))
def test_a_retry_delay_is_never_negative_nor_over_its_cap(
    policy: RetryPolicy, retry_number: int, seed: int
) -> None:
    delay_s = retry_delay_s(policy, retry_number, random.Random(seed))
    assert math.isfinite(delay_s)
    assert 0.0 <= delay_s <= policy.max_delay_ms / 1000.0


@given(policies, retry_numbers, retry_numbers, st.integers(min_value=0, max_value=2**32))
def test_a_later_retry_never_waits_less_for_the_same_jitter(
    policy: RetryPolicy, first: int, second: int, seed: int
) -> None:
    # Exponential delays are random: drawn with the same generator state (the same jitter),
    # the later retry's delay is at least the earlier one's. Fixed and linear need no draw.
    earlier, later = sorted((first, second))
    earlier_s = retry_delay_s(policy, earlier, random.Random(seed))
    later_s = retry_delay_s(policy, later, random.Random(seed))
    assert later_s >= earlier_s
    if policy.strategy == "fixed":
        assert later_s == earlier_s


# Health score

maybe_ms = st.none() | st.floats(min_value=0, max_value=1e6)


@given(
    ok=st.booleans(),
    latency_ms=maybe_ms,
    degraded_latency_ms=st.floats(min_value=0, max_value=1e5),
    lag_s=maybe_ms,
    max_lag_s=maybe_ms,
    connections_in_use=st.none() | st.integers(min_value=0, max_value=10_000),
    max_connections=st.none() | st.integers(min_value=0, max_value=10_000),
)
def test_a_health_score_is_an_integer_from_0_to_100_and_0_when_the_probe_failed(
    **fields: Any,
) -> None:
    score = health_score(**fields)
    assert isinstance(score, int)
    assert 0 <= score <= 100
    if not fields["ok"]:
        assert score == 0


@given(
    st.floats(min_value=0, max_value=1e5),
    st.floats(min_value=0, max_value=1e5),
    st.floats(min_value=1, max_value=1e4),
)
def test_a_slower_probe_never_scores_higher(
    latency_ms: float, more_ms: float, degraded_latency_ms: float
) -> None:
    faster = health_score(ok=True, latency_ms=latency_ms, degraded_latency_ms=degraded_latency_ms)
    slower = health_score(
        ok=True, latency_ms=latency_ms + more_ms, degraded_latency_ms=degraded_latency_ms
    )
    assert slower <= faster


# JSON shaping

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary()
    | st.dates()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.times()
    | st.timedeltas()
    | st.uuids()
    | st.builds(
        Range,
        st.none() | st.integers(),
        st.none() | st.integers(),
        st.sampled_from(["[)", "(]", "[]", "()"]),
    )
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text() | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_any_shaped_value_is_strict_json(value: Any) -> None:
    shaped = to_json(value)
    text = json.dumps(shaped, allow_nan=False)  # NaN and Infinity are not JSON
    assert json.loads(text) == shaped


@given(
    st.lists(st.dictionaries(st.text(max_size=5), values, max_size=3), max_size=6),
    st.integers(min_value=0, max_value=2_000),
)
def test_shaped_rows_are_a_prefix_that_fits_the_byte_budget(
    rows: list[dict[str, Any]], max_bytes: int
) -> None:
    kept, truncated = shape_rows(rows, max_bytes)
    assert len(kept) <= len(rows)
    assert truncated is (len(kept) < len(rows))
    used = sum(len(json.dumps(row, separators=(",", ":")).encode()) for row in kept)
    assert used <= max_bytes
    for original, shaped in zip(rows, kept, strict=False):
        assert shaped == {str(name): to_json(value) for name, value in original.items()}


def test_the_value_strategies_reach_the_types_psycopg_returns() -> None:
    # A guard for the strategies above: each type to_json handles specially is covered.
    assert to_json(Decimal("1E-7")) == "0.0000001"
    assert to_json(dt.timedelta(days=1, seconds=1)) == "P1DT1S"
    assert to_json(uuid.UUID(int=0)) == "00000000-0000-0000-0000-000000000000"
    assert to_json(float("nan")) == "NaN"
