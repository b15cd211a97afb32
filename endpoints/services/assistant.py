"""Who an assistant connects as, cluster by cluster, and how many queries it runs at once.

The MCP server (``manage.py run_mcp``) asks :class:`AccessPolicy` which role each tool
call may use. Reads connect with the cluster's assistant role, writes with its assistant
write role, each checked once (:func:`endpoints.services.privileges.check_role`) before it is used,
and again whenever the registry gives the cluster another role or password. A cluster whose
role is missing or unsafe (a superuser, a role that reads settings or files) is refused
with one line that says what to create, unless the operator passed the explicit unsafe
flag; then the call goes ahead (missing: with the endpoints' operations role) and
:attr:`Access.warning` says so, for every answer to repeat.

:class:`QuerySlots` bounds the assistant queries one process runs at once: beyond the
limit a call fails at once with :class:`AssistantBusy` rather than queueing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from endpoints import routing
from endpoints.core.conninfo import StoredRole
from endpoints.core.errortext import first_line
from endpoints.core.purposes import (
    ASSISTANT_ROLE,
    ASSISTANT_WRITE_ROLE,
    Purpose,
    assistant_purpose,
)
from endpoints.services import privileges

UNSAFE_FLAG = "--unsafe-allow-privileged-roles"
# A role's privileges can change on the server without the registry knowing: a usable role
# is checked again after this long, a refused one (being fixed, perhaps) sooner.
RECHECK_USABLE_S = 300.0
RECHECK_REFUSED_S = 30.0


class AssistantBusy(routing.RoutingError):
    """This process already runs as many assistant queries as it may."""


class AccessRefused(routing.RoutingError):
    """The cluster has no safe role for this kind of tool; the message says what to do."""


@dataclass(frozen=True)
class Access:
    """How a tool call may reach a cluster: the purpose (its role), and a warning if unsafe."""

    cluster: str
    purpose: Purpose
    warning: str = ""


@dataclass(frozen=True)
class _Verdict:
    """The outcome of checking one role: usable (``access``) or refused (why)."""

    role: StoredRole | None
    access: Access | None = None
    refused: str = ""
    checked_at: float = 0.0
    # For the operator: a usable role that has more rights than it needs.
    note: str = ""

    def stale(self, role: StoredRole | None, now: float) -> bool:
        """Whether to check again: another role registered since, or time to look again."""
        if role != self.role:
            return True
        ttl = RECHECK_USABLE_S if self.access is not None else RECHECK_REFUSED_S
        return now - self.checked_at >= ttl


@dataclass(frozen=True)
class StartupCheck:
    """One cluster's role as the server found it at start-up."""

    cluster: str
    writes: bool
    # False: checked and refused (tools that need it are off for this cluster).
    usable: bool
    # For the operator's log: why refused, an unsafe role served anyway, or not checked yet.
    message: str = ""
    # A role is registered but may do too much (as opposed to no role at all).
    unsafe_role: bool = False


def how_to_create(cluster: str, *, writes: bool) -> str:
    """One line: the SQL that creates a least-privilege role, and how to register it."""
    role = ASSISTANT_WRITE_ROLE if writes else ASSISTANT_ROLE
    grants = "pg_read_all_data, pg_write_all_data" if writes else "pg_read_all_data"
    option = "--assistant-write-user" if writes else "--assistant-user"
    return (
        f"create one on the cluster (CREATE ROLE {role} LOGIN PASSWORD '...'; GRANT {grants} "
        f"TO {role}) and register it (the cluster's admin page, or manage.py register_cluster "
        f"{cluster} {option} {role} {option.replace('user', 'password-file')} FILE); the "
        "README's MCP section has the full SQL"
    )


class AccessPolicy:
    """Decides, per cluster and kind of tool, which role a call uses; checks roles once."""

    def __init__(self, *, allow_unsafe: bool = False) -> None:
        self.allow_unsafe = allow_unsafe
        self._verdicts: dict[tuple[str, bool], _Verdict] = {}
        self._lock = threading.Lock()

    def access(self, cluster: str, *, writes: bool = False) -> Access:
        """The access a call needs, checking the role first if it was not checked yet.

        Raises :class:`AccessRefused`, or the routing errors of the check itself (the
        cluster does not answer, the role cannot log in).
        """
        role = self._registered_role(cluster, writes)
        verdict = self._verdicts.get((cluster, writes))
        if verdict is None or verdict.stale(role, time.monotonic()):
            verdict = self._check(cluster, writes, role)
        if verdict.access is None:
            raise AccessRefused(verdict.refused)
        return verdict.access

    def check_at_start(self, cluster: str, *, writes: bool = False) -> StartupCheck:
        """Check ``cluster``'s role now, for the server's start-up.

        Never raises: a cluster that does not answer is checked again at its first call.
        """
        role = self._registered_role(cluster, writes)
        try:
            verdict = self._check(cluster, writes, role)
        except routing.RoutingError as exc:
            first = first_line(exc)
            return StartupCheck(
                cluster,
                writes,
                usable=True,
                message=f"cluster {cluster}: could not check its {_kind(writes)} yet "
                f"({first}); it is checked again at the first call",
            )
        if verdict.access is None:
            return StartupCheck(
                cluster, writes, usable=False, message=verdict.refused, unsafe_role=role is not None
            )
        return StartupCheck(
            cluster, writes, usable=True, message=verdict.access.warning or verdict.note
        )

    # Checking

    def _registered_role(self, cluster: str, writes: bool) -> StoredRole | None:
        """The role the registry names (this process's snapshot: no query)."""
        snapshot = routing.get_router(assistant_purpose(writes=writes)).topology.current()
        view = snapshot.cluster(cluster)
        if view is None:
            raise routing.ClusterNotFound(cluster, list(snapshot.clusters))
        return view.assistant_write_role if writes else view.assistant_role

    def _check(self, cluster: str, writes: bool, role: StoredRole | None) -> _Verdict:
        if role is None:
            verdict = self._missing(cluster, writes)
        else:
            report = privileges.check_role(cluster, assistant_purpose(writes=writes))
            verdict = self._judged(cluster, writes, role, report)
        verdict = replace(verdict, checked_at=time.monotonic())
        with self._lock:
            self._verdicts[(cluster, writes)] = verdict
        return verdict

    def _missing(self, cluster: str, writes: bool) -> _Verdict:
        if self.allow_unsafe:
            warning = (
                f"UNSAFE: cluster {cluster} has no {_kind(writes)}, so this server connects "
                f"with its operations role (started with {UNSAFE_FLAG})"
            )
            purpose = assistant_purpose(writes=writes, operations_role=True)
            return _Verdict(None, Access(cluster, purpose, warning))
        tools = "write tools are" if writes else "SQL read tools are"
        return _Verdict(
            None,
            refused=f"cluster {cluster} has no {_kind(writes)}, so its {tools} off: "
            + how_to_create(cluster, writes=writes),
        )

    def _judged(
        self, cluster: str, writes: bool, role: StoredRole, report: privileges.RoleReport
    ) -> _Verdict:
        problems = report.problems()
        purpose = assistant_purpose(writes=writes)
        if not problems:
            notes = report.notes(writes=writes)
            note = f"cluster {cluster}: {notes[0]}" if notes else ""
            return _Verdict(role, Access(cluster, purpose), note=note)
        if self.allow_unsafe:
            warning = f"UNSAFE: {problems[0]} (served because of {UNSAFE_FLAG})"
            return _Verdict(role, Access(cluster, purpose, warning))
        tools = "write tools are" if writes else "SQL read tools are"
        return _Verdict(
            role,
            refused=f"cluster {cluster}: {'; '.join(problems)}, so its {tools} off. Use a "
            f"least-privilege role instead: {how_to_create(cluster, writes=writes)} (or pass "
            f"{UNSAFE_FLAG} to serve it anyway)",
        )


def _kind(writes: bool) -> str:
    return "assistant write role" if writes else "assistant role"


class QuerySlots:
    """At most ``limit`` assistant queries at once in this process; more fail at once."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"the query limit must be a positive integer, not {limit!r}")
        self.limit = limit
        self._semaphore = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._semaphore.acquire(blocking=False):
            raise AssistantBusy(
                f"busy: this server already runs {self.limit} assistant queries at once "
                "(PGWARDEN_MCP_MAX_CONCURRENT_QUERIES); try again when one has finished"
            )
        try:
            yield
        finally:
            self._semaphore.release()
