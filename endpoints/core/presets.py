"""Execution presets: documented values for a cluster's routing, retry and circuit fields.

The cluster form offers them (``fast``, ``balanced``, ``robust``) so an operator picks a
behaviour instead of tuning eleven numbers; the README's table is this module's
:data:`PRESETS`. ``balanced`` is exactly the model's defaults (a test keeps them equal).

- ``fast``: fail fast. One attempt, short timeouts, a circuit that opens after two
  failures and retries soon; the fastest endpoint gets the traffic. For latency-sensitive
  callers that have their own fallback.
- ``balanced``: the defaults. A few quick retries with exponential backoff, moderate
  timeouts, weighted round robin.
- ``robust``: ride out trouble. Six attempts backing off up to 10 s, long timeouts, a
  circuit that needs five failures and stays open 30 s; the healthiest endpoint first.
  For batch jobs and callers that prefer late to failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from endpoints.core.vocabulary import RetryStrategy, Strategy


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    # Cluster field name -> value; every preset sets the same fields.
    values: Mapping[str, object]


def _preset(name: str, summary: str, **values: object) -> Preset:
    return Preset(name, summary, MappingProxyType(values))


PRESETS: tuple[Preset, ...] = (
    _preset(
        "fast",
        "fail fast: one attempt, short timeouts, the fastest endpoint",
        load_balancing=Strategy.RESPONSE_TIME,
        connect_timeout_s=1,
        statement_timeout_ms=5_000,
        retry_strategy=RetryStrategy.FIXED,
        retry_max_attempts=1,
        retry_initial_delay_ms=10,
        retry_max_delay_ms=100,
        retry_multiplier=2.0,
        retry_increment_ms=100,
        circuit_failure_threshold=2,
        circuit_cooldown_s=2.0,
    ),
    _preset(
        "balanced",
        "the defaults: three attempts with exponential backoff, weighted round robin",
        load_balancing=Strategy.WEIGHTED_ROUND_ROBIN,
        connect_timeout_s=3,
        statement_timeout_ms=30_000,
        retry_strategy=RetryStrategy.EXPONENTIAL,
        retry_max_attempts=3,
        retry_initial_delay_ms=50,
        retry_max_delay_ms=2_000,
        retry_multiplier=2.0,
        retry_increment_ms=100,
        circuit_failure_threshold=3,
        circuit_cooldown_s=5.0,
    ),
    _preset(
        "robust",
        "ride out trouble: six attempts backing off to 10 s, long timeouts, healthiest first",
        load_balancing=Strategy.HEALTH_BASED,
        connect_timeout_s=10,
        statement_timeout_ms=120_000,
        retry_strategy=RetryStrategy.EXPONENTIAL,
        retry_max_attempts=6,
        retry_initial_delay_ms=100,
        retry_max_delay_ms=10_000,
        retry_multiplier=2.0,
        retry_increment_ms=100,
        circuit_failure_threshold=5,
        circuit_cooldown_s=30.0,
    ),
)


def preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming the known ones otherwise."""
    for candidate in PRESETS:
        if candidate.name == name:
            return candidate
    known = ", ".join(p.name for p in PRESETS)
    raise ValueError(f"unknown preset {name!r}; expected one of {known}")
