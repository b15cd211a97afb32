"""How long to wait before retrying, and when to stop sending requests to an endpoint.

Pure decisions over plain data: no Django, no database, no I/O. Strategy names are the
members of :class:`endpoints.core.vocabulary.RetryStrategy` (or their string values), which
the models' choices are built from.

Retry delays (:func:`retry_delay_s`)
------------------------------------
``retry_number`` 1 is the delay before the first retry, i.e. before attempt 2.

``fixed``
    ``initial_delay_ms`` every time.
``linear``
    ``initial_delay_ms + increment_ms * (retry_number - 1)``.
``exponential``
    "full jitter" (AWS Architecture Blog, *Exponential Backoff And Jitter*): a uniform
    random delay between 0 and ``min(max_delay_ms, initial_delay_ms * multiplier **
    (retry_number - 1))``. The randomness spreads out the retries of many clients that
    failed together, so they do not hammer a recovering server in lockstep.

Every delay is capped at ``max_delay_ms`` and never negative; results are in seconds.
Large retry numbers are safe: the exponent is capped where the cap is reached, before
``multiplier ** n`` is computed, so it cannot overflow a float.

Circuit breaker (:class:`CircuitBreaker`)
-----------------------------------------
One per endpoint per process::

    closed --(failure_threshold consecutive failures)--> open
    open   --(cooldown_s elapsed, next allow())--------> half_open (one trial admitted)
    half_open --(trial succeeds)--> closed
    half_open --(trial fails)-----> open, for a fresh cooldown

A failure means the endpoint could not be reached or did not answer (connect error,
timeout, connection lost). An SQL error is a success for the breaker: the server
answered. :meth:`CircuitBreaker.release` is for a half-open trial abandoned before it
reached the server (e.g. the pool was exhausted): it frees the trial slot without a
verdict.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from endpoints.core.vocabulary import RetryStrategy, values

_RETRY_STRATEGIES = frozenset(RetryStrategy)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True)
class RetryPolicy:
    """A cluster's retry settings (the ``retry_*`` fields of ``endpoints.models.Cluster``)."""

    strategy: str = RetryStrategy.EXPONENTIAL  # a RetryStrategy: fixed | exponential | linear
    max_attempts: int = 3  # attempts per request, the first included (1 = no retry)
    initial_delay_ms: int = 50
    max_delay_ms: int = 2000
    multiplier: float = 2.0  # exponential
    increment_ms: int = 100  # linear

    def __post_init__(self) -> None:
        # The same bounds the model validates, so a policy built from a valid cluster
        # always passes and a bad one fails here rather than as odd delays later.
        if self.strategy not in _RETRY_STRATEGIES:
            raise ValueError(
                f"unknown retry strategy {self.strategy!r}; expected one of "
                f"{', '.join(values(RetryStrategy))}"
            )
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (got {self.max_attempts})")
        for field in ("initial_delay_ms", "max_delay_ms", "increment_ms"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} cannot be negative (got {getattr(self, field)})")
        if not self.multiplier >= 1.0:  # also rejects NaN
            raise ValueError(f"multiplier must be at least 1 (got {self.multiplier})")


def retry_delay_s(
    policy: RetryPolicy, retry_number: int, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry ``retry_number`` (1 = before the second attempt).

    ``rng`` draws the exponential strategy's jitter; the module's shared generator is
    used when it is None.
    """
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1 (got {retry_number})")
    cap_ms = policy.max_delay_ms
    if policy.strategy == RetryStrategy.FIXED:
        delay_ms: float = min(policy.initial_delay_ms, cap_ms)
    elif policy.strategy == RetryStrategy.LINEAR:
        # Python ints do not overflow, so large retry numbers only need the cap.
        delay_ms = min(policy.initial_delay_ms + policy.increment_ms * (retry_number - 1), cap_ms)
    else:
        ceiling_ms = _exponential_ceiling_ms(policy, retry_number)
        delay_ms = (rng if rng is not None else random).uniform(0.0, ceiling_ms)
        delay_ms = min(delay_ms, ceiling_ms)  # uniform(a, b) may return b + rounding
    return max(0.0, delay_ms) / 1000.0


def _exponential_ceiling_ms(policy: RetryPolicy, retry_number: int) -> float:
    """``min(max_delay, initial * multiplier ** (retry_number - 1))`` without overflow."""
    cap_ms = policy.max_delay_ms
    initial_ms = policy.initial_delay_ms
    exponent = retry_number - 1
    if initial_ms <= 0 or cap_ms <= 0 or policy.multiplier == 1.0:
        return float(min(initial_ms, cap_ms))
    # The smallest exponent at which the cap is reached; any larger one gives the cap
    # too, so stopping there keeps multiplier ** exponent finite (2.0 ** 1100 overflows).
    exponent_at_cap = max(0, math.ceil(math.log(cap_ms / initial_ms, policy.multiplier)))
    exponent = min(exponent, exponent_at_cap)
    return min(float(cap_ms), initial_ms * policy.multiplier**exponent)


@dataclass(frozen=True, slots=True)
class CircuitSnapshot:
    """One breaker's state at one moment, as status pages, metrics and MCP tools show it.

    ``dataclasses.asdict`` (and pydantic) give the JSON shape: the six fields by name.
    """

    #: ``"closed"``, ``"open"`` or ``"half_open"``.
    state: str
    consecutive_failures: int
    failure_threshold: int
    cooldown_s: float
    #: Seconds of cooldown left while open; 0.0 when closed, half-open or the cooldown is over.
    open_for_s: float
    #: Times the circuit opened since the breaker was made.
    opened_count: int


class CircuitBreaker:
    """Per endpoint, per process, thread-safe.

    closed -> (``failure_threshold`` consecutive failures) -> open -> (``cooldown_s``
    elapsed) -> half_open: exactly one trial request is let through; its success closes
    the circuit, its failure reopens it for another cooldown.

    The breaker does not know which request is the trial: any success closes it (the
    server answered), and any failure while half-open reopens it. Failures reported
    while already open (requests admitted before it opened, finishing late) are counted
    but do not extend the cooldown, so a burst of them cannot keep the circuit open.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_settings(failure_threshold, cooldown_s)
        self._lock = threading.Lock()
        self._clock = clock
        self._failure_threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._state = CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._opened_count = 0

    def allow(self) -> bool:
        """Whether a request may go to the endpoint now.

        Closed: True. Open: False until the cooldown has elapsed; then the circuit turns
        half-open and this call, alone, gets True (the trial). Half-open with the trial
        still in flight: False.
        """
        # Hot path, no lock: reading one attribute is atomic. A request that races with
        # the circuit opening gets through, exactly as it would had it come a moment
        # earlier, and its outcome is recorded like any other.
        if self._state == CLOSED:
            return True
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self._cooldown_s:
                    return False
                self._state = HALF_OPEN
            elif self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``; reading it changes nothing.

        An open circuit whose cooldown has elapsed still reads ``"open"`` until
        :meth:`allow` admits the trial.
        """
        return self._state

    def record_success(self) -> None:
        """The endpoint answered: close the circuit and reset the failure count."""
        # Hot path, no lock: nothing to change. If another thread records a failure
        # concurrently, that failure survives instead of being reset; the two requests
        # overlapped, so neither order is more "consecutive" than the other.
        if self._state == CLOSED and self._consecutive_failures == 0:
            return
        with self._lock:
            self._state = CLOSED
            self._consecutive_failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        """The endpoint did not answer: count it; open at the threshold, or reopen."""
        with self._lock:
            self._consecutive_failures += 1
            at_threshold = self._consecutive_failures >= self._failure_threshold
            # A failed trial reopens at once; a closed circuit opens at the threshold.
            if self._state == HALF_OPEN or (self._state == CLOSED and at_threshold):
                self._open()

    def release(self) -> None:
        """A half-open trial ended without reaching the server: let another request try.

        No change in any other case.
        """
        with self._lock:
            if self._state == HALF_OPEN:
                self._trial_in_flight = False

    def reconfigure(self, failure_threshold: int, cooldown_s: float) -> None:
        """Apply new settings; the current state and failure count are kept.

        A new cooldown applies to an already open circuit (measured from when it
        opened). A lower threshold takes effect at the next failure.
        """
        _check_settings(failure_threshold, cooldown_s)
        with self._lock:
            self._failure_threshold = failure_threshold
            self._cooldown_s = cooldown_s

    def snapshot(self) -> CircuitSnapshot:
        """The breaker's state for status pages, metrics and the MCP server."""
        with self._lock:
            open_for_s = 0.0
            if self._state == OPEN:
                elapsed = self._clock() - self._opened_at
                open_for_s = max(0.0, self._cooldown_s - elapsed)
            return CircuitSnapshot(
                state=self._state,
                consecutive_failures=self._consecutive_failures,
                failure_threshold=self._failure_threshold,
                cooldown_s=self._cooldown_s,
                open_for_s=open_for_s,
                opened_count=self._opened_count,
            )

    def _open(self) -> None:
        # Caller holds the lock.
        self._state = OPEN
        self._opened_at = self._clock()
        self._trial_in_flight = False
        self._opened_count += 1


def _check_settings(failure_threshold: int, cooldown_s: float) -> None:
    if failure_threshold < 1:
        raise ValueError(f"failure_threshold must be at least 1 (got {failure_threshold})")
    if not cooldown_s >= 0:  # also rejects NaN
        raise ValueError(f"cooldown_s cannot be negative (got {cooldown_s})")
