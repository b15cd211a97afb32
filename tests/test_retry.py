"""endpoints.core.retry: retry delays per strategy, and the circuit breaker's state machine.

Pure functions over plain data: no database, no sleeping; clocks are fake and randomness
is seeded.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import asdict
from typing import Any

import pytest

from endpoints.core.retry import CircuitBreaker, CircuitSnapshot, RetryPolicy, retry_delay_s
from endpoints.core.vocabulary import RetryStrategy, values

RETRY_STRATEGIES = values(RetryStrategy)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_policy_accepts_every_strategy_of_the_vocabulary_the_models_use() -> None:
    # retry.py must not import Django: it and the models share endpoints.core.vocabulary.
    from endpoints import models

    assert models.RetryStrategy is RetryStrategy
    for strategy in RetryStrategy:
        assert RetryPolicy(strategy=strategy).strategy == strategy.value
        assert retry_delay_s(RetryPolicy(strategy=strategy.value), 1) >= 0


def test_policy_defaults_match_the_model_defaults() -> None:
    from endpoints.models import Cluster

    cluster = Cluster()
    policy = RetryPolicy()

    assert policy == RetryPolicy(
        strategy=cluster.retry_strategy,
        max_attempts=cluster.retry_max_attempts,
        initial_delay_ms=cluster.retry_initial_delay_ms,
        max_delay_ms=cluster.retry_max_delay_ms,
        multiplier=cluster.retry_multiplier,
        increment_ms=cluster.retry_increment_ms,
    )


# RetryPolicy validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"strategy": "fibonacci"}, "unknown retry strategy 'fibonacci'; expected one of fixed"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"initial_delay_ms": -1}, "initial_delay_ms cannot be negative"),
        ({"max_delay_ms": -1}, "max_delay_ms cannot be negative"),
        ({"increment_ms": -5}, "increment_ms cannot be negative"),
        ({"multiplier": 0.5}, "multiplier must be at least 1"),
        ({"multiplier": float("nan")}, "multiplier must be at least 1"),
    ],
)
def test_policy_rejects_what_the_model_rejects(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**fields)


@pytest.mark.parametrize("retry_number", [0, -1])
def test_retry_numbers_start_at_1(retry_number: int) -> None:
    with pytest.raises(ValueError, match="retry_number starts at 1"):
        retry_delay_s(RetryPolicy(), retry_number)


# Fixed


def test_fixed_delay_is_constant() -> None:
    policy = RetryPolicy(strategy="fixed", initial_delay_ms=250)

    assert [retry_delay_s(policy, n) for n in (1, 2, 3, 50)] == [0.25, 0.25, 0.25, 0.25]


def test_fixed_delay_is_capped() -> None:
    policy = RetryPolicy(strategy="fixed", initial_delay_ms=5000, max_delay_ms=1000)

    assert retry_delay_s(policy, 1) == 1.0


def test_fixed_delay_of_zero_retries_at_once() -> None:
    assert retry_delay_s(RetryPolicy(strategy="fixed", initial_delay_ms=0), 3) == 0.0


# Linear


def test_linear_delay_grows_by_the_increment_then_stops_at_the_cap() -> None:
    policy = RetryPolicy(strategy="linear", initial_delay_ms=50, increment_ms=100, max_delay_ms=400)

    delays = [retry_delay_s(policy, n) for n in range(1, 8)]

    assert delays == [0.05, 0.15, 0.25, 0.35, 0.4, 0.4, 0.4]


def test_linear_delay_with_zero_increment_is_fixed() -> None:
    policy = RetryPolicy(strategy="linear", initial_delay_ms=80, increment_ms=0)

    assert {retry_delay_s(policy, n) for n in range(1, 10)} == {0.08}


def test_linear_delay_for_a_huge_retry_number_is_the_cap() -> None:
    policy = RetryPolicy(strategy="linear")

    assert retry_delay_s(policy, 10**30) == 2.0


# Exponential (full jitter)


def _ceiling_s(policy: RetryPolicy, retry_number: int) -> float:
    return min(policy.max_delay_ms, policy.initial_delay_ms * 2.0 ** (retry_number - 1)) / 1000


def test_exponential_delays_stay_within_zero_and_the_growing_ceiling() -> None:
    policy = RetryPolicy(strategy="exponential", initial_delay_ms=50, max_delay_ms=2000)
    rng = random.Random(42)

    for retry_number in range(1, 12):
        ceiling = _ceiling_s(policy, retry_number)
        delays = [retry_delay_s(policy, retry_number, rng) for _ in range(2000)]
        assert all(0.0 <= delay <= ceiling for delay in delays), retry_number
        # Full jitter spreads over the whole range: close to both ends, mean near half.
        assert min(delays) < 0.02 * ceiling
        assert max(delays) > 0.98 * ceiling
        assert sum(delays) / len(delays) == pytest.approx(ceiling / 2, rel=0.06)


def test_exponential_ceiling_grows_then_saturates_at_the_cap() -> None:
    policy = RetryPolicy(strategy="exponential", initial_delay_ms=50, max_delay_ms=2000)

    ceilings = [_observed_ceiling(policy, n) for n in range(1, 10)]

    # 50, 100, 200, 400, 800, 1600 ms, then 3200 is capped at 2000 ms.
    assert ceilings == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0], rel=0.01)


def _observed_ceiling(policy: RetryPolicy, retry_number: int) -> float:
    """The largest of many jittered delays: the ceiling, to within 1%."""
    rng = random.Random(retry_number)
    return max(retry_delay_s(policy, retry_number, rng) for _ in range(3000))


class _TopOfRange(random.Random):
    """An rng whose uniform() returns the upper bound, to see the ceiling exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize(
    ("multiplier", "expected_ms"),
    [(2.0, [50, 100, 200, 400, 800, 1600, 2000]), (3.0, [50, 150, 450, 1350, 2000, 2000, 2000])],
)
def test_exponential_ceiling_sequence_is_exact(multiplier: float, expected_ms: list[int]) -> None:
    policy = RetryPolicy(multiplier=multiplier)

    ceilings = [retry_delay_s(policy, n, _TopOfRange()) for n in range(1, 8)]

    assert ceilings == pytest.approx([ms / 1000 for ms in expected_ms])


@pytest.mark.parametrize("retry_number", [1024, 1100, 10_000, 10**9])
def test_exponential_does_not_overflow_for_large_retry_numbers(retry_number: int) -> None:
    policy = RetryPolicy(strategy="exponential", multiplier=2.0)
    rng = random.Random(5)

    delays = [retry_delay_s(policy, retry_number, rng) for _ in range(100)]

    assert all(0.0 <= delay <= 2.0 for delay in delays)
    assert retry_delay_s(policy, retry_number, _TopOfRange()) == 2.0


def test_exponential_with_a_huge_multiplier_does_not_overflow() -> None:
    policy = RetryPolicy(multiplier=1e300, initial_delay_ms=4_000_000_000, max_delay_ms=10)

    assert retry_delay_s(policy, 10_000, _TopOfRange()) == 0.01


def test_exponential_with_multiplier_1_is_jittered_fixed() -> None:
    policy = RetryPolicy(multiplier=1.0, initial_delay_ms=300)

    assert retry_delay_s(policy, 10_000, _TopOfRange()) == 0.3


def test_exponential_initial_above_the_cap_is_capped() -> None:
    policy = RetryPolicy(initial_delay_ms=5000, max_delay_ms=1000)

    assert retry_delay_s(policy, 1, _TopOfRange()) == 1.0


def test_exponential_with_zero_delays_is_zero() -> None:
    assert retry_delay_s(RetryPolicy(initial_delay_ms=0), 5, random.Random(1)) == 0.0
    assert retry_delay_s(RetryPolicy(max_delay_ms=0), 5, random.Random(1)) == 0.0


def test_exponential_is_reproducible_with_a_seed_and_works_without_one() -> None:
    policy = RetryPolicy()

    first = [retry_delay_s(policy, n, random.Random(9)) for n in range(1, 6)]
    second = [retry_delay_s(policy, n, random.Random(9)) for n in range(1, 6)]
    unseeded = retry_delay_s(policy, 3)

    assert first == second
    assert 0.0 <= unseeded <= 0.2


@pytest.mark.parametrize("strategy", RETRY_STRATEGIES)
def test_every_strategy_is_capped_and_never_negative(strategy: str) -> None:
    rng = random.Random(3)
    for initial, cap, increment, multiplier in [
        (0, 0, 0, 1.0),
        (50, 2000, 100, 2.0),
        (3000, 100, 500, 10.0),
        (1, 10**9, 10**6, 1.5),
    ]:
        policy = RetryPolicy(
            strategy=strategy,
            initial_delay_ms=initial,
            max_delay_ms=cap,
            increment_ms=increment,
            multiplier=multiplier,
        )
        for retry_number in (1, 2, 3, 10, 100, 10_000):
            delay = retry_delay_s(policy, retry_number, rng)
            assert 0.0 <= delay <= cap / 1000, (policy, retry_number)


# Circuit breaker: transitions


def test_a_new_breaker_is_closed_and_allows() -> None:
    breaker = CircuitBreaker(clock=FakeClock())

    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()


def test_opens_at_exactly_the_threshold() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=FakeClock())

    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()

    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_threshold_of_one_opens_on_the_first_failure() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=FakeClock())

    breaker.record_failure()

    assert breaker.state == "open"


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=FakeClock())

    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()

    assert breaker.state == "closed"
    assert breaker.snapshot().consecutive_failures == 2
    breaker.record_failure()
    assert breaker.state == "open"


def test_stays_open_until_the_cooldown_has_elapsed() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5.0, clock=clock)
    breaker.record_failure()

    clock.advance(4.999)
    assert not breaker.allow()
    assert breaker.state == "open"

    clock.advance(0.001)
    assert breaker.state == "open"  # reading the state does not start the trial
    assert breaker.allow()
    assert breaker.state == "half_open"


def test_half_open_admits_a_single_trial() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(5.0)

    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    assert breaker.state == "half_open"


def test_trial_success_closes_the_circuit() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(5.0)
    assert breaker.allow()

    breaker.record_success()

    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()
    assert breaker.snapshot().consecutive_failures == 0


def test_trial_failure_reopens_for_a_fresh_cooldown() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(7.0)  # well past the first cooldown
    assert breaker.allow()

    breaker.record_failure()

    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state == "half_open"


def test_release_frees_the_trial_slot() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(5.0)
    assert breaker.allow()
    assert not breaker.allow()

    breaker.release()

    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()


def test_release_changes_nothing_outside_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    breaker.record_failure()
    breaker.release()
    assert breaker.snapshot().consecutive_failures == 1
    assert breaker.state == "closed"

    breaker.record_failure()
    breaker.release()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_failures_while_open_do_not_extend_the_cooldown() -> None:
    clock = FakeClock()
    breaker = _opened(clock)

    clock.advance(3.0)
    breaker.record_failure()  # a request admitted before the circuit opened, failing late
    clock.advance(2.0)

    assert breaker.allow()
    assert breaker.snapshot().opened_count == 1


def test_a_late_success_while_open_closes_the_circuit() -> None:
    # The server answered a request admitted before the circuit opened: it is alive.
    breaker = _opened(FakeClock())

    breaker.record_success()

    assert breaker.state == "closed"
    assert breaker.allow()


def test_zero_cooldown_allows_a_trial_at_once() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0.0, clock=FakeClock())
    breaker.record_failure()

    assert breaker.state == "open"
    assert breaker.allow()
    assert not breaker.allow()


def _opened(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=5.0, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state == "open"
    return breaker


# Circuit breaker: snapshot, reconfigure, validation


def test_snapshot_of_a_new_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=4, cooldown_s=2.5, clock=FakeClock())

    assert asdict(breaker.snapshot()) == {
        "state": "closed",
        "consecutive_failures": 0,
        "failure_threshold": 4,
        "cooldown_s": 2.5,
        "open_for_s": 0.0,
        "opened_count": 0,
    }


def test_snapshot_is_a_frozen_value_with_the_json_shape_status_pages_show() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=1.0, clock=FakeClock())
    breaker.record_failure()
    snapshot = breaker.snapshot()

    assert isinstance(snapshot, CircuitSnapshot)
    assert list(asdict(snapshot)) == [
        "state",
        "consecutive_failures",
        "failure_threshold",
        "cooldown_s",
        "open_for_s",
        "opened_count",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.state = "open"  # type: ignore[misc]
    breaker.record_failure()
    # A snapshot is a copy: the breaker opening afterwards does not change it.
    assert (snapshot.state, breaker.snapshot().state) == ("closed", "open")


def test_snapshot_through_a_full_cycle() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(1.5)

    assert asdict(breaker.snapshot()) == {
        "state": "open",
        "consecutive_failures": 3,
        "failure_threshold": 3,
        "cooldown_s": 5.0,
        "open_for_s": pytest.approx(3.5),
        "opened_count": 1,
    }

    clock.advance(10.0)
    assert breaker.snapshot().open_for_s == 0.0
    assert breaker.snapshot().state == "open"

    assert breaker.allow()
    assert breaker.snapshot().state == "half_open"
    assert breaker.snapshot().open_for_s == 0.0

    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot.state == "open"
    assert snapshot.consecutive_failures == 4
    assert snapshot.open_for_s == 5.0
    assert snapshot.opened_count == 2

    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert asdict(breaker.snapshot()) == {
        "state": "closed",
        "consecutive_failures": 0,
        "failure_threshold": 3,
        "cooldown_s": 5.0,
        "open_for_s": 0.0,
        "opened_count": 2,
    }


def test_reconfigure_changes_threshold_and_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=5, cooldown_s=10.0, clock=clock)

    breaker.reconfigure(failure_threshold=2, cooldown_s=1.0)
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"

    clock.advance(1.0)
    assert breaker.allow()
    snapshot = breaker.snapshot()
    assert (snapshot.failure_threshold, snapshot.cooldown_s) == (2, 1.0)


def test_reconfigure_applies_a_new_cooldown_to_an_open_circuit() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(2.0)

    breaker.reconfigure(failure_threshold=3, cooldown_s=30.0)
    assert breaker.snapshot().open_for_s == pytest.approx(28.0)
    assert not breaker.allow()

    breaker.reconfigure(failure_threshold=3, cooldown_s=1.0)
    assert breaker.allow()


def test_a_lower_threshold_takes_effect_at_the_next_failure() -> None:
    breaker = CircuitBreaker(failure_threshold=5, clock=FakeClock())
    for _ in range(3):
        breaker.record_failure()

    breaker.reconfigure(failure_threshold=2, cooldown_s=5.0)
    assert breaker.state == "closed"

    breaker.record_failure()
    assert breaker.state == "open"


@pytest.mark.parametrize(
    ("threshold", "cooldown", "message"),
    [
        (0, 5.0, "failure_threshold must be at least 1"),
        (3, -1.0, "cooldown_s cannot be negative"),
        (3, float("nan"), "cooldown_s cannot be negative"),
    ],
)
def test_settings_are_validated(threshold: int, cooldown: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(failure_threshold=threshold, cooldown_s=cooldown)
    breaker = CircuitBreaker()
    with pytest.raises(ValueError, match=message):
        breaker.reconfigure(threshold, cooldown)
    assert breaker.snapshot().failure_threshold == 3


def test_default_clock_is_monotonic_time() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=3600.0)
    breaker.record_failure()

    assert not breaker.allow()
    open_for_s = breaker.snapshot().open_for_s
    assert isinstance(open_for_s, float)
    assert 3599.0 < open_for_s <= 3600.0


# Circuit breaker: threads


def test_exactly_one_of_many_concurrent_callers_gets_the_trial() -> None:
    for _ in range(20):  # repeat: a race, if any, has many chances to show
        clock = FakeClock()
        breaker = _opened(clock)
        clock.advance(5.0)
        callers = 16
        start = threading.Barrier(callers)
        admitted: list[bool] = []
        lock = threading.Lock()

        def call(
            breaker: CircuitBreaker = breaker,
            start: threading.Barrier = start,
            admitted: list[bool] = admitted,
            lock: threading.Lock = lock,
        ) -> None:
            start.wait()
            result = breaker.allow()
            with lock:
                admitted.append(result)

        threads = [threading.Thread(target=call) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert admitted.count(True) == 1
        assert len(admitted) == callers
        assert breaker.state == "half_open"


def test_concurrent_failures_open_the_circuit_once_and_count_every_failure() -> None:
    breaker = CircuitBreaker(failure_threshold=100, clock=FakeClock())
    threads_count, failures_each = 8, 500

    def fail() -> None:
        for _ in range(failures_each):
            breaker.record_failure()

    threads = [threading.Thread(target=fail) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    snapshot = breaker.snapshot()
    assert snapshot.consecutive_failures == threads_count * failures_each
    assert snapshot.opened_count == 1
    assert snapshot.state == "open"
