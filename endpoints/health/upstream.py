"""Whether a replica endpoint streams from the primary, as the primary itself sees it.

Failover promotes only a replica observed streaming from the cluster's current primary
(see :mod:`endpoints.failover`, "Candidate choice"). A server that answers probes as a
replica proves nothing: anyone can run one, or fake the answers, at a host of their
choosing. The evidence therefore comes from the primary's side, which such a server
cannot forge: the primary's ``pg_stat_replication`` must show a walsender

- whose ``application_name`` is the replica endpoint's registered name (replicas set it
  through ``cluster_name`` or ``application_name`` in their ``primary_conninfo``),
- whose ``state`` is ``streaming``,
- whose ``client_addr`` is one of the addresses the endpoint's registered host resolves to.

:func:`streaming_from_primary` (live: the primary answered just now) and
:func:`recorded_streaming` (the primary is down: what the last sweep in which it answered
recorded) decide, without I/O. :class:`Resolver` resolves hosts with ``getaddrinfo``,
caching answers for :data:`RESOLVE_TTL_S` so that a sweep every second does not ask DNS
every second, and never waiting more than a given time for them.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from datetime import datetime

from endpoints.core.observations import WalSender

# How long a host's addresses are reused before DNS is asked again; a failed lookup is
# retried sooner.
RESOLVE_TTL_S = 60.0
RESOLVE_FAILURE_TTL_S = 5.0
# Lookups of one batch run at most this many at once.
RESOLVE_THREADS = 8

NO_CLIENT_ADDRESS = (
    "pg_stat_replication shows no client address: grant pg_read_all_stats to pgwarden's role"
)


@dataclass(frozen=True)
class Resolution:
    """The addresses ``host`` resolves to (canonical text), or why it did not resolve."""

    host: str
    addresses: frozenset[str]
    error: str = ""


@dataclass(frozen=True)
class Streaming:
    """Whether a replica was observed streaming from the primary; ``detail`` says what was seen."""

    observed: bool
    detail: str


# The decision (pure)


def canonical_address(text: str) -> str | None:
    """``text`` as one IP address in canonical form (IPv4-mapped IPv6 as IPv4), else None."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def streaming_from_primary(
    name: str, resolution: Resolution, walsenders: Sequence[WalSender]
) -> Streaming:
    """Whether the primary's ``walsenders`` show endpoint ``name`` (at ``resolution``) streaming.

    Observed when some walsender is named ``name``, is ``streaming`` and comes from an
    address of ``resolution``. Otherwise ``detail`` says what the primary showed instead:
    no such walsender, no client address (pgwarden's role lacks ``pg_read_all_stats``, or
    the replica connects through a Unix socket), a host that does not resolve, another
    address, or a state other than streaming.
    """
    named = [sender for sender in walsenders if sender.name == name]
    if not named:
        return Streaming(False, f"no walsender named {name} on the primary{_others(walsenders)}")
    if all(sender.addr is None for sender in named):
        if all(sender.state is None for sender in named):
            return Streaming(False, NO_CLIENT_ADDRESS)
        return Streaming(
            False,
            f"walsender {name} connects through a Unix socket: it has no client address to "
            f"match against {resolution.host}",
        )
    if resolution.error:
        return Streaming(False, f"{resolution.host} does not resolve ({resolution.error})")
    matching = [s for s in named if _address_of(s) in resolution.addresses]
    if not matching:
        seen = ", ".join(sorted({str(_address_of(s) or s.addr) for s in named if s.addr}))
        verb = "streams" if any(s.state == "streaming" for s in named) else "connects"
        return Streaming(
            False, f"walsender {name} {verb} from {seen}, not from {_addresses_of(resolution)}"
        )
    streaming = [s for s in matching if s.state == "streaming"]
    if not streaming:
        states = ", ".join(sorted({s.state or "unknown" for s in matching}))
        return Streaming(False, f"walsender {name} is {states}, not streaming")
    return Streaming(
        True, f"walsender {name} streams from {_address_of(streaming[0])}{_of_host(resolution)}"
    )


def recorded_streaming(
    *,
    primary: str | None,
    primary_pk: int | None,
    upstream_pk: int | None,
    upstream_name: str,
    observed_at: datetime | None,
    last_sweep_at: datetime | None,
    now: datetime,
) -> Streaming:
    """What sweeps recorded, for when the primary does not answer (its walsenders unseen).

    Observed when the replica's record (``upstream_pk``, ``observed_at``) comes from the
    last sweep that read the primary's walsenders (``last_sweep_at``: the newest record
    among the cluster's replicas, as a sweep records them all at once) and says it
    streamed from ``primary``. An older record (the replica was disabled during that
    sweep) says nothing about the primary's last moments. ``upstream_name`` names the
    endpoint ``upstream_pk`` is, for the explanation.
    """
    if primary is None or primary_pk is None:
        return Streaming(False, "the cluster has no enabled primary for it to stream from")
    if observed_at is None:
        return Streaming(
            False,
            f"{primary} does not answer as a primary, and no sweep has recorded the replica "
            f"streaming from it (none read {primary}'s pg_stat_replication since the "
            "endpoint was added)",
        )
    age = _age(now, observed_at)
    if last_sweep_at is not None and observed_at < last_sweep_at:
        return Streaming(
            False,
            f"its record ({age} old) predates the last sweep that read {primary}'s "
            f"pg_stat_replication ({_age(now, last_sweep_at)} ago), which did not include "
            "it (disabled then?)",
        )
    if upstream_pk == primary_pk:
        return Streaming(True, f"recorded streaming from {primary} {age} ago")
    if upstream_pk is None:
        return Streaming(
            False,
            f"not streaming from {primary} when a sweep last read its pg_stat_replication, "
            f"{age} ago",
        )
    return Streaming(
        False,
        f"last recorded streaming from {upstream_name}, not from the current primary "
        f"{primary} ({age} ago)",
    )


def _address_of(sender: WalSender) -> str | None:
    return canonical_address(sender.addr) if sender.addr is not None else None


def _others(walsenders: Sequence[WalSender]) -> str:
    names = sorted({sender.name for sender in walsenders})
    if not names:
        return " (it has none)"
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f" (it has: {shown})"


def _addresses_of(resolution: Resolution) -> str:
    addresses = ", ".join(sorted(resolution.addresses))
    if canonical_address(resolution.host) is not None:
        return addresses
    return f"an address of {resolution.host} ({addresses})"


def _of_host(resolution: Resolution) -> str:
    if canonical_address(resolution.host) is not None:
        return ""
    return f", an address of {resolution.host}"


def _age(now: datetime, then: datetime) -> str:
    seconds = max(0.0, (now - then).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# Resolving hosts


def lookup_addresses(host: str) -> frozenset[str]:
    """Every address ``getaddrinfo`` gives for ``host`` (TCP), canonical; raises OSError."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    addresses = {canonical_address(str(info[4][0])) for info in infos}
    return frozenset(address for address in addresses if address is not None)


class Resolver:
    """Host names to addresses, cached; a batch waits at most a given time for DNS.

    An IP address resolves to itself without a lookup. A lookup that outlasts the wait
    is reported as not resolved, and finishes in the background into the cache, for the
    next batch; meanwhile a batch asking for that host waits on it rather than starting
    another, so a DNS server that hangs never costs more than one thread per host.
    """

    def __init__(
        self,
        lookup: Callable[[str], frozenset[str]] = lookup_addresses,
        *,
        ttl_s: float = RESOLVE_TTL_S,
        failure_ttl_s: float = RESOLVE_FAILURE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._failure_ttl_s = failure_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Resolution]] = {}
        self._pending: dict[str, Future[Resolution]] = {}
        self._lock = threading.Lock()

    def resolve_all(self, hosts: Iterable[str], *, timeout_s: float) -> dict[str, Resolution]:
        """Each host's resolution, from the cache or looked up concurrently (``timeout_s`` max)."""
        resolved: dict[str, Resolution] = {}
        missing: list[str] = []
        for host in dict.fromkeys(hosts):
            known = self._known(host)
            if known is None:
                missing.append(host)
            else:
                resolved[host] = known
        if missing:
            resolved.update(self._look_up(missing, timeout_s))
        return resolved

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def _known(self, host: str) -> Resolution | None:
        address = canonical_address(host)
        if address is not None:
            return Resolution(host, frozenset({address}))
        with self._lock:
            entry = self._cache.get(host)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def _look_up(self, hosts: list[str], timeout_s: float) -> dict[str, Resolution]:
        with self._lock:
            futures = {host: self._pending[host] for host in hosts if host in self._pending}
            new = [host for host in hosts if host not in futures]
            if new:
                pool = ThreadPoolExecutor(min(RESOLVE_THREADS, len(new)), "pgwarden-resolve")
                for host in new:
                    futures[host] = self._pending[host] = pool.submit(self._resolve, host)
                # Lookups not done in time finish in the background, into the cache.
                pool.shutdown(wait=False)
        wait_for_futures(futures.values(), timeout=timeout_s)
        return {
            host: future.result()
            if future.done()
            else Resolution(host, frozenset(), f"no answer from DNS within {timeout_s:g} s")
            for host, future in futures.items()
        }

    def _resolve(self, host: str) -> Resolution:
        """Look ``host`` up, cache the answer and forget the pending lookup; never raises."""
        try:
            addresses = self._lookup(host)
        except Exception as exc:  # OSError, UnicodeError: whatever it is, not resolved
            resolution = Resolution(host, frozenset(), str(exc) or type(exc).__name__)
        else:
            error = "" if addresses else "no IP address"
            resolution = Resolution(host, addresses, error)
        ttl_s = self._failure_ttl_s if resolution.error else self._ttl_s
        with self._lock:
            self._cache[host] = (self._clock() + ttl_s, resolution)
            self._pending.pop(host, None)
        return resolution


RESOLVER = Resolver()
