"""One round trip to one endpoint, bounded by a timeout; writes nothing to Django.

The probe is a coroutine so that the whole exchange (TCP connect, TLS,
authentication, query) sits under one deadline: a host that accepts the
connection and then hangs costs exactly the timeout, and a sweep can await
many probes concurrently.

:class:`ProbeResult` and :class:`WalSender` are plain values defined in
:mod:`endpoints.core.observations` (re-exported here).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import timeout_from_conninfo

from endpoints.core.conninfo import ConnectionInfo
from endpoints.core.crypto import DecryptionError, redact
from endpoints.core.errortext import one_line
from endpoints.core.observations import ProbeResult, WalSender

if TYPE_CHECKING:
    from endpoints.models import Endpoint

# One round trip. WAL positions are bytes since 0/0. Replay lag is 0 when the replica has
# replayed all it received (an idle primary sends nothing, and a timestamp-based lag would
# grow forever); otherwise the age of the last transaction it replayed. A primary also
# lists its walsenders (pg_stat_replication): which replicas stream from it, from where.
# On a replica that subquery is not run (an uncorrelated subquery in a CASE branch not
# taken is never evaluated): its walsenders would be cascading standbys, not needed.
PROBE_SQL = """
SELECT r.in_recovery,
       current_setting('server_version'),
       (CASE WHEN r.in_recovery THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END
        - '0/0'::pg_lsn)::bigint,
       (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::bigint,
       CASE WHEN NOT r.in_recovery THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NOT NULL
                 AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0.0
            -- NULL (unknown) when nothing was replayed since start-up: no timestamp to age.
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int,
       current_setting('max_connections')::int,
       current_setting('default_transaction_read_only')::bool,
       CASE WHEN NOT r.in_recovery THEN
           (SELECT json_agg(json_build_object(
                       'name', application_name, 'addr', host(client_addr), 'state', state))
            FROM pg_stat_replication)
       END
FROM (SELECT pg_is_in_recovery() AS in_recovery) AS r
"""

# A replay lag this long is looked at again after a pause (see settled_replay_lag).
RECHECK_LAG_S = 1.0
RECHECK_PAUSE_S = 0.05

# Connection set-ups a sweep runs at once besides its suspects (see sweep_endpoints). On
# the 2-core machine of `make bench`, with 400 healthy endpoints on one local server, 24
# answered the most within the probe timeout (8 to 64 tried); all at once, none did.
MAX_CONCURRENT_SETUPS = 24
# A set-up still unanswered after this long is waiting on the endpoint, not using CPU here
# (a healthy one takes milliseconds): it stops counting against MAX_CONCURRENT_SETUPS, so
# hosts that newly hang cannot hold every turn.
SETUP_TURN_S = 0.1
# A probe given this much less than its timeout still counts as having had all of it.
FULL_TIMEOUT_SLACK_S = 0.05


async def probe_async(
    info: ConnectionInfo, timeout_s: float, *, budget_s: float | None = None
) -> ProbeResult:
    """Probe, waiting at most ``timeout_s`` (or ``budget_s``, when a sweep has less left)."""
    started = time.perf_counter()
    conn: psycopg.AsyncConnection | None = None
    try:
        async with asyncio.timeout(timeout_s if budget_s is None else min(timeout_s, budget_s)):
            conn = await psycopg.AsyncConnection.connect(**info.connect_kwargs(), autocommit=True)
            connected = time.perf_counter()
            cursor = await conn.execute(PROBE_SQL)
            row = await cursor.fetchone()
            done = time.perf_counter()
            assert row is not None
            lag_s = await settled_replay_lag(conn, row[3], row[4])
    except TimeoutError:
        return _no_answer(info, timeout_s)
    except psycopg.errors.ConnectionTimeout:
        # libpq's connect_timeout, shorter than the deadline, ran out first (psycopg
        # enforces it as libpq does, 2 s at least); its own message names no host.
        used = timeout_from_conninfo({"connect_timeout": info.connect_timeout_s})
        return _no_answer(info, used)
    except psycopg.Error as exc:
        # No secrets passed: libpq never puts the password in its messages, and searching
        # for it would make the user and database names, which an assistant's add_endpoint
        # chooses, an oracle for it.
        return ProbeResult(ok=False, error=one_line(exc))
    except OSError as exc:
        return ProbeResult(ok=False, error=redact(f"{info.host}:{info.port}: {exc}"))
    finally:
        if conn is not None:
            await conn.close()
    return ProbeResult(
        ok=True,
        latency_ms=(done - connected) * 1000,
        connect_ms=(connected - started) * 1000,
        in_recovery=bool(row[0]),
        server_version=str(row[1]),
        wal_lsn=row[2],
        received_lsn=row[3],
        replay_lag_s=lag_s,
        connections_in_use=row[5],
        max_connections=row[6],
        read_only=bool(row[7]),
        walsenders=walsenders_from_json(row[8]),
    )


def walsenders_from_json(value: object) -> tuple[WalSender, ...]:
    """PROBE_SQL's ``json_agg`` of walsenders (NULL when there are none) as records."""
    if not isinstance(value, list):
        return ()
    return tuple(
        WalSender(
            name=str(item.get("name") or ""),
            addr=_text_or_none(item.get("addr")),
            state=_text_or_none(item.get("state")),
        )
        for item in value
        if isinstance(item, dict)
    )


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


async def settled_replay_lag(
    conn: psycopg.AsyncConnection[Any], received_lsn: int | None, lag_s: float | None
) -> float | None:
    """PROBE_SQL's replay lag, looked at again when it may be the length of a quiet spell.

    With WAL received but not yet replayed, a replica's lag is the age of the last
    transaction it replayed. After the primary was quiet for a minute, a checkpoint or
    one commit makes that a minute, though replaying it takes milliseconds: a false
    alert, and a replica taken out of reads. So a lag over RECHECK_LAG_S is checked
    again after RECHECK_PAUSE_S: a replica that has replayed all it had received is
    caught up (0, as when nothing was pending); one still replaying keeps its lag.
    """
    if lag_s is None:
        return None
    # Clocks of primary and replica may differ by a little: never a negative lag.
    lag_s = max(0.0, lag_s)
    if lag_s < RECHECK_LAG_S or received_lsn is None:
        return lag_s
    await asyncio.sleep(RECHECK_PAUSE_S)
    cursor = await conn.execute(
        "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint >= %s", [received_lsn]
    )
    row = await cursor.fetchone()
    return 0.0 if row is not None and row[0] else lag_s


def _no_answer(info: ConnectionInfo, timeout_s: float) -> ProbeResult:
    return ProbeResult(
        ok=False,
        error=f"no answer from {info.host}:{info.port} within {timeout_s:g} s "
        "(host down, hung, or a firewall dropping packets)",
        timed_out=True,
    )


def probe(info: ConnectionInfo, timeout_s: float) -> ProbeResult:
    """Synchronous wrapper for callers outside an event loop (admin actions, tasks)."""
    return asyncio.run(probe_async(info, timeout_s))


def check_endpoints(
    endpoints: Iterable[Endpoint], *, timeout_s: float | None = None
) -> list[tuple[Endpoint, ProbeResult]]:
    """Check endpoints with their own settings, all at once; the slowest bounds the total.

    Each probe (connection set-up and query) is bounded by ``timeout_s`` (a health sweep
    passes the cluster's probe timeout), by default by its cluster's connect timeout, as
    the router would connect; a hung endpoint costs at most that and delays no other.
    """
    endpoints = list(endpoints)
    # Build every coroutine (which reads the registry) before entering the event loop:
    # Django's ORM refuses to run inside one.
    probes = [_probe_endpoint(endpoint, timeout_s) for endpoint in endpoints]

    async def gather() -> list[ProbeResult]:
        return list(await asyncio.gather(*probes))

    return list(zip(endpoints, asyncio.run(gather()), strict=True))


# Long for its docstring: the nested coroutines share one deadline and one semaphore.
def sweep_endpoints(
    endpoints: Iterable[Endpoint],
    *,
    timeout_s: float,
    suspects: Collection[int] = (),
    max_setups: int | None = None,
) -> list[tuple[Endpoint, ProbeResult | None]]:
    """A sweep's probes: all of them within one ``timeout_s``, the CPU spent in order.

    A fresh connection costs CPU in this process (libpq's SCRAM key derivation, about
    3 ms, holding the GIL) and at the server (a backend fork). Hundreds started at once
    share the CPU, so that on a busy machine all of them finish late together, and an
    event loop flooded with handshakes fires its timers late. So:

    - ``suspects`` (primary keys of endpoints whose last probe failed) start at once:
      a hung host costs waiting, not CPU, and each gets its full timeout;
    - the others start at most ``max_setups`` at a time, in the order given (the
      caller puts the primary first, then the endpoints probed longest ago: see
      :func:`endpoints.health.probe_order`; default :data:`MAX_CONCURRENT_SETUPS`);
      one still unanswered after :data:`SETUP_TURN_S` is waiting, not computing, and
      lets the next one start;
    - the sweep ends ``timeout_s`` after it started. A probe still waiting for its turn
      then, or cut short by that deadline before its own full timeout, was not probed:
      its entry is ``None``, and the caller records nothing for it rather than a
      failure that says nothing about the endpoint.

    When every probe gets its turn in time (a machine with CPU to spare), this is the
    same as probing all of them at once.
    """
    endpoints = list(endpoints)
    suspect_pks = set(suspects)
    probes = [_probe_factory(endpoint, timeout_s) for endpoint in endpoints]

    async def gather() -> list[ProbeResult | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        setups = asyncio.Semaphore(max_setups or MAX_CONCURRENT_SETUPS)

        async def run(factory: _ProbeFactory) -> ProbeResult | None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            result = await factory(remaining)
            # Given noticeably less than its own timeout, silence proves nothing.
            if result.timed_out and remaining < timeout_s - FULL_TIMEOUT_SLACK_S:
                return None
            return result

        async def gated(factory: _ProbeFactory) -> ProbeResult | None:
            await setups.acquire()
            task = asyncio.ensure_future(run(factory))
            try:
                # A probe unanswered this long is waiting, not computing: it frees its turn.
                await asyncio.wait({task}, timeout=SETUP_TURN_S)
            finally:
                setups.release()
            return await task

        return list(
            await asyncio.gather(
                *(
                    run(factory) if endpoint.pk in suspect_pks else gated(factory)
                    for endpoint, factory in zip(endpoints, probes, strict=True)
                )
            )
        )

    return list(zip(endpoints, asyncio.run(gather()), strict=True))


def check_endpoint(endpoint: Endpoint) -> ProbeResult:
    return check_endpoints([endpoint])[0][1]


def _probe_endpoint(
    endpoint: Endpoint, timeout_s: float | None
) -> Coroutine[None, None, ProbeResult]:
    try:
        if timeout_s is None:
            info = endpoint.connection_info()
            timeout_s = float(endpoint.cluster.connect_timeout_s)
        else:
            # libpq's own connect timeout (whole seconds) rounded up, so that the probe's
            # deadline, the exact one, is the one that fires.
            info = endpoint.connection_info(connect_timeout_s=math.ceil(timeout_s))
    except DecryptionError as exc:
        return _failed(str(exc))
    return probe_async(info, timeout_s=timeout_s)


_ProbeFactory = Callable[[float], Awaitable[ProbeResult]]


def _probe_factory(endpoint: Endpoint, timeout_s: float) -> _ProbeFactory:
    """A probe of ``endpoint`` to start later with what is left of the sweep's deadline."""
    try:
        info = endpoint.connection_info(connect_timeout_s=math.ceil(timeout_s))
    except DecryptionError as exc:
        error = str(exc)
        return lambda _budget_s: _failed(error)
    return lambda budget_s: probe_async(info, timeout_s, budget_s=budget_s)


async def _failed(error: str) -> ProbeResult:
    return ProbeResult(ok=False, error=error)
