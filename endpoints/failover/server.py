"""What failover does on the PostgreSQL servers themselves: promote, re-point, fence, wait.

Every function connects with the endpoint's registered (operations) credentials, in
autocommit, with ``application_name`` ``pgwarden-failover`` and a statement timeout, and
turns a connection or SQL failure into a :class:`FailoverError` that says what was being
done on which endpoint, redacted. Nothing here touches the control database or the audit
trail: the procedures (:mod:`endpoints.failover.procedures`) record what these did.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from endpoints.core.candidates import format_lsn
from endpoints.core.crypto import DecryptionError, remember
from endpoints.core.errortext import one_line
from endpoints.core.waiting import poll_until
from endpoints.failover.errors import FailoverError
from endpoints.models import Endpoint

PROMOTE_WAIT_S = 30
PROMOTION_VERIFY_S = 10.0
# How long refuse_writes waits for the read-only setting to reach new sessions, and for
# each ended session to exit.
READ_ONLY_WAIT_S = 5.0
TERMINATE_WAIT_MS = 5000
APPLICATION_NAME = "pgwarden-failover"


def connect(endpoint: Endpoint, *, statement_timeout_s: float = 30.0) -> psycopg.Connection[Any]:
    """An autocommit connection to ``endpoint``; FailoverError, redacted, if there is none."""
    try:
        kwargs = endpoint.connection_info().connect_kwargs()
    except DecryptionError as exc:
        raise FailoverError(f"{endpoint}: {exc}") from None
    kwargs["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    kwargs["application_name"] = APPLICATION_NAME
    try:
        return psycopg.connect(**kwargs, autocommit=True)
    except psycopg.Error as exc:
        raise FailoverError(f"cannot connect to {endpoint}: {one_line(exc)}") from None


def scalar(conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row of ``query``, or None without a row."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


@contextlib.contextmanager
def session(
    endpoint: Endpoint, what: str, *secrets: str, statement_timeout_s: float = 30.0
) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose SQL errors become FailoverErrors saying what was being done where."""
    with connect(endpoint, statement_timeout_s=statement_timeout_s) as conn:
        try:
            yield conn
        except psycopg.Error as exc:
            raise FailoverError(f"{what} on {endpoint} failed: {one_line(exc, *secrets)}") from None


def refuse_writes(endpoint: Endpoint) -> int:
    """Make ``endpoint`` refuse new writes and end its client sessions; returns how many.

    ``default_transaction_read_only = on`` through ``ALTER SYSTEM``, so it survives a
    restart, and a reload; once new sessions see it, every other client backend is
    terminated (waiting up to :data:`TERMINATE_WAIT_MS` each), so transactions that
    began before end too. Used on an old primary that came back (split brain) and at the
    start of a switchover.
    """
    with session(endpoint, "making the server read-only") as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
    # The postmaster applies the reload asynchronously: a session forked before it did could
    # still write, so the sessions are ended only once new ones are read-only.
    if not poll_until(lambda: _new_sessions_read_only(endpoint), timeout_s=READ_ONLY_WAIT_S):
        raise FailoverError(
            f"{endpoint} still lets new sessions write {READ_ONLY_WAIT_S:g} s after "
            "default_transaction_read_only was set and reloaded; check its configuration "
            "(a per-database or per-role setting overrides it)"
        )
    with session(endpoint, "ending client sessions") as conn:
        terminated = scalar(
            conn,
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, %s))::int "
            "FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            (TERMINATE_WAIT_MS,),
        )
    return int(terminated or 0)


def _new_sessions_read_only(endpoint: Endpoint) -> bool:
    with session(endpoint, "checking the read-only setting") as conn:
        return scalar(conn, "SELECT current_setting('default_transaction_read_only')") == "on"


def allow_writes(endpoint: Endpoint) -> None:
    """Undo :func:`refuse_writes` (``ALTER SYSTEM RESET``, reload): for an aborted switchover."""
    with session(endpoint, "making the server writable again") as conn:
        conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")


def promote(candidate: Endpoint) -> float:
    """``pg_promote(wait => true)`` on ``candidate``; how long it took, in milliseconds."""
    started = time.monotonic()
    with session(candidate, "pg_promote()", statement_timeout_s=PROMOTE_WAIT_S + 10) as conn:
        promoted = scalar(
            conn, "SELECT pg_promote(wait => true, wait_seconds => %s)", (PROMOTE_WAIT_S,)
        )
    if not promoted:
        raise FailoverError(
            f"{candidate} did not finish its promotion within {PROMOTE_WAIT_S} s; check its log"
        )
    return (time.monotonic() - started) * 1000


def wait_until_promoted(candidate: Endpoint) -> str:
    """Wait, with new connections, until ``candidate`` left recovery; its WAL position then."""
    writing_at = poll_until(lambda: _writing_at(candidate), timeout_s=PROMOTION_VERIFY_S)
    if writing_at is None:
        raise FailoverError(
            f"{candidate} is still in recovery {PROMOTION_VERIFY_S:g} s after pg_promote() "
            "returned; check its log"
        )
    return writing_at


def _writing_at(candidate: Endpoint) -> str | None:
    """The WAL position ``candidate`` writes at, as text, or None while it is in recovery."""
    with session(candidate, "checking the promotion") as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() "
            "THEN (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint END"
        ).fetchone()
    return format_lsn(int(row[1])) if row is not None and not row[0] else None


def still_in_recovery(endpoint: Endpoint) -> bool:
    """True only if ``endpoint`` answers and is certainly still a replica."""
    try:
        with connect(endpoint) as conn:
            return bool(scalar(conn, "SELECT pg_is_in_recovery()"))
    except (FailoverError, psycopg.Error):
        return False


def final_position(endpoint: Endpoint) -> int:
    """The WAL position ``endpoint`` (a primary) has written up to, in bytes since 0/0."""
    with session(endpoint, "reading the final WAL position") as conn:
        return int(scalar(conn, "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"))


def wait_for_replay(replica: Endpoint, target_lsn: int, timeout_s: float) -> None:
    """Wait until ``replica`` replayed up to ``target_lsn``; FailoverError after ``timeout_s``."""
    replayed: int | None = None
    with session(replica, "waiting for replay") as conn:

        def caught_up() -> bool:
            nonlocal replayed
            replayed = scalar(conn, "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")
            return replayed is not None and replayed >= target_lsn

        if poll_until(caught_up, timeout_s=timeout_s, interval_s=0.02):
            return
    at = format_lsn(replayed) if replayed is not None else "nothing"
    raise FailoverError(
        f"{replica.name} replayed {at} of the old primary's {format_lsn(target_lsn)} "
        f"within {timeout_s:g} s; is it streaming? (pg_stat_replication)"
    )


@dataclass(frozen=True)
class Repointed:
    """A replica whose ``primary_conninfo`` now names the new primary, and its slot (or "")."""

    replica: Endpoint
    slot: str


def repoint(replica: Endpoint, new_primary: Endpoint) -> Repointed:
    """Create the replica's slot on the new primary, then rewrite host and port of its conninfo."""
    with session(replica, "reading primary_conninfo") as conn:
        current = str(scalar(conn, "SHOW primary_conninfo") or "")
        slot = str(scalar(conn, "SHOW primary_slot_name") or "")
    if not current:
        raise FailoverError(
            f"{replica} has no primary_conninfo (it does not stream; archive only?): "
            "configure it by hand or rebuild it from the new primary"
        )
    try:
        params = conninfo_to_dict(current)
    except psycopg.ProgrammingError as exc:
        raise FailoverError(f"{replica}: its primary_conninfo does not parse ({exc})") from None
    secret = str(params.get("password") or "")
    # The replication password is not one pgwarden decrypted: make the log filter know it too.
    remember(secret)
    # hostaddr, if set, would win over host and keep pointing at the old primary.
    params.pop("hostaddr", None)
    params.update(host=new_primary.host, port=str(new_primary.port))
    if slot:
        with session(new_primary, f"creating replication slot {slot!r}") as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) "
                "WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)",
                (slot, slot),
            )
    with session(replica, "re-pointing primary_conninfo", secret) as conn:
        conn.execute(
            sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                sql.Literal(make_conninfo("", **params))
            )
        )
        conn.execute("SELECT pg_reload_conf()")
    return Repointed(replica, slot)


def streams_from(replica: Endpoint, primary: Endpoint) -> tuple[bool, str]:
    """Whether ``replica``'s WAL receiver streams from ``primary``, and what it does instead."""
    with session(replica, "reading pg_stat_wal_receiver") as conn:
        row = conn.execute(
            "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver"
        ).fetchone()
    if row is None:
        return False, "no WAL receiver running"
    status, host, port = row
    if status == "streaming" and host == primary.host and port == primary.port:
        return True, f"streaming from {host}:{port}"
    return False, f"WAL receiver {status or 'unknown'}, from {host}:{port}"
