"""What a health probe saw, and what a sweep derived from it: plain values, no I/O.

:class:`ProbeResult` is one round trip to one endpoint (made by
:mod:`endpoints.health.probe`); :class:`Observation` is that probe with the state,
score, failure count and role mismatch a sweep derived from it
(:func:`endpoints.health.observations.observe`). They live in ``core`` because
health records them, alerts evaluate them and the control cycle reacts to them, and
none of those may import another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from endpoints.core.vocabulary import State

if TYPE_CHECKING:
    from endpoints.models import Endpoint


@dataclass(frozen=True)
class WalSender:
    """One row of a primary's ``pg_stat_replication``: a replica (or backup) streaming from it.

    ``addr`` is ``host(client_addr)``: None for a Unix-socket connection, and for every
    walsender when the probing role lacks ``pg_read_all_stats`` (``state`` is None then too).
    """

    name: str  # application_name
    addr: str | None
    state: str | None


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float | None = None  # the query's round trip, connection set-up excluded
    connect_ms: float | None = None
    in_recovery: bool | None = None
    server_version: str | None = None
    # Bytes since 0/0: the current position on a primary, the replayed one on a replica.
    wal_lsn: int | None = None
    received_lsn: int | None = None
    replay_lag_s: float | None = None
    connections_in_use: int | None = None
    max_connections: int | None = None
    # default_transaction_read_only: on once a fenced old primary has been made to refuse
    # writes, so a sweep can tell whether that still has to be done.
    read_only: bool | None = None
    # A primary's walsenders (empty on a replica, whose cascading standbys are not listed).
    walsenders: tuple[WalSender, ...] = ()
    error: str = ""
    # No answer within the deadline (as opposed to a refusal or an error the server sent).
    timed_out: bool = False

    def summary(self) -> str:
        if not self.ok:
            return self.error
        role = "in recovery (replica)" if self.in_recovery else "not in recovery (primary)"
        return (
            f"PostgreSQL {self.server_version}, {role}, round trip {self.latency_ms:.1f} ms "
            f"(connect {self.connect_ms:.1f} ms)"
        )


@dataclass(frozen=True)
class Observation:
    """One endpoint in one sweep: the probe and what was derived from it.

    ``endpoint`` is the row as loaded before the sweep, so its observed fields are
    the previous sweep's.
    """

    endpoint: Endpoint
    result: ProbeResult
    lag_bytes: int | None
    state: str = State.UNKNOWN
    score: int = 0
    consecutive_failures: int = 0
    role_mismatch: bool = False

    @property
    def available(self) -> bool:
        """Answering and allowed to take traffic."""
        return self.result.ok and self.state != State.FENCED

    @property
    def writable_while_fenced(self) -> bool:
        """Split brain: fenced, yet answering as a primary (not in recovery)."""
        return self.state == State.FENCED and self.result.ok and self.result.in_recovery is False
