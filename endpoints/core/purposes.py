"""What each connection to a managed cluster is for, which role it uses, and its limits.

Pure values and rules, no I/O and no Django: the local cluster (``make run``, tests, bench)
uses the same SQL to create its roles that the README tells operators to run.

Three purposes, three roles (PostgreSQL roles are cluster-wide, so each purpose has one
role per cluster):

- **operations**: probes, failover, switchover, fencing and application routing, with each
  endpoint's own registered user (often a superuser, as failover needs);
- **assistant reads**: the MCP server's read tools, with the cluster's *assistant role*
  (``pg_read_all_data``, never a superuser, never able to read server settings or files);
- **assistant writes**: the MCP write tools (``run_mcp --allow-writes``), with the cluster's
  *assistant write role*.

Assistant connections also carry session settings in their start-up packet, so they hold
for every statement whatever SQL is sent (the guard refuses ``SET`` and ``set_config``):
``standard_conforming_strings`` on (the guard parses SQL that way, so a backslash cannot
hide ``'; ...`` from it), ``client_encoding`` UTF8, a ``lock_timeout``, a ceiling on
``statement_timeout`` and ``idle_in_transaction_session_timeout``, and for reads
``default_transaction_read_only``. ``temp_file_limit`` only a superuser may set, so it is
set on the roles themselves (:func:`assistant_role_sql`), with the others as a backstop
for sessions that do not come from pgwarden.
"""

from __future__ import annotations

from dataclasses import dataclass

ASSISTANT_APPLICATION_NAME = "pgwarden-assistant"
# Role names the local cluster and docker-compose create; any name works on a real cluster.
ASSISTANT_ROLE = "pgwarden_assistant"
ASSISTANT_WRITE_ROLE = "pgwarden_assistant_write"

DEFAULT_MAX_TIMEOUT_MS = 60_000
DEFAULT_LOCK_TIMEOUT_MS = 2_000
# Temporary files one assistant statement may write (sorts, hashes that spill to disk).
DEFAULT_TEMP_FILE_LIMIT = "1GB"


@dataclass(frozen=True)
class Purpose:
    """One kind of connection: whose role it uses and what its sessions may do."""

    name: str
    # False: operations (the endpoints' own credentials, no extra session settings).
    assistant: bool
    writes: bool
    # True only when the operator chose the unsafe fallback: an assistant purpose that
    # connects with each endpoint's operations role because the cluster has no usable
    # assistant role.
    uses_operations_role: bool = False

    def __str__(self) -> str:
        return self.name


OPERATIONS = Purpose("operations", assistant=False, writes=True, uses_operations_role=True)
ASSISTANT_READ = Purpose("assistant_read", assistant=True, writes=False)
ASSISTANT_WRITE = Purpose("assistant_write", assistant=True, writes=True)
ASSISTANT_READ_AS_OPERATIONS = Purpose(
    "assistant_read_as_operations", assistant=True, writes=False, uses_operations_role=True
)
ASSISTANT_WRITE_AS_OPERATIONS = Purpose(
    "assistant_write_as_operations", assistant=True, writes=True, uses_operations_role=True
)
PURPOSES = (
    OPERATIONS,
    ASSISTANT_READ,
    ASSISTANT_WRITE,
    ASSISTANT_READ_AS_OPERATIONS,
    ASSISTANT_WRITE_AS_OPERATIONS,
)


def assistant_purpose(*, writes: bool, operations_role: bool = False) -> Purpose:
    """The assistant purpose for reads or writes, with its own role or the operations role."""
    if operations_role:
        return ASSISTANT_WRITE_AS_OPERATIONS if writes else ASSISTANT_READ_AS_OPERATIONS
    return ASSISTANT_WRITE if writes else ASSISTANT_READ


@dataclass(frozen=True)
class AssistantLimits:
    """Bounds every assistant session carries (PGWARDEN_MCP_* settings)."""

    max_timeout_ms: int = DEFAULT_MAX_TIMEOUT_MS
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS

    def __post_init__(self) -> None:
        for name in ("max_timeout_ms", "lock_timeout_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive number of milliseconds, not {value!r}")

    @property
    def idle_in_transaction_ms(self) -> int:
        # A statement may run for max_timeout_ms; a session idle in a transaction that long
        # is one whose client went away.
        return self.max_timeout_ms


def session_settings(purpose: Purpose, limits: AssistantLimits) -> tuple[tuple[str, str], ...]:
    """The settings an assistant session starts with (empty for operations)."""
    if not purpose.assistant:
        return ()
    settings = [
        ("standard_conforming_strings", "on"),
        ("client_encoding", "UTF8"),
        ("statement_timeout", f"{limits.max_timeout_ms}ms"),
        ("lock_timeout", f"{limits.lock_timeout_ms}ms"),
        ("idle_in_transaction_session_timeout", f"{limits.idle_in_transaction_ms}ms"),
    ]
    if not purpose.writes:
        settings.append(("default_transaction_read_only", "on"))
    return tuple(settings)


def assistant_role_settings(
    *, writes: bool, limits: AssistantLimits, temp_file_limit: str = DEFAULT_TEMP_FILE_LIMIT
) -> tuple[tuple[str, str], ...]:
    """What ``ALTER ROLE ... SET`` fixes on an assistant role (see :func:`assistant_role_sql`)."""
    settings = [
        ("temp_file_limit", temp_file_limit),
        ("statement_timeout", f"{limits.max_timeout_ms}ms"),
        ("lock_timeout", f"{limits.lock_timeout_ms}ms"),
        ("idle_in_transaction_session_timeout", f"{limits.idle_in_transaction_ms}ms"),
    ]
    if not writes:
        settings.append(("default_transaction_read_only", "on"))
    return tuple(settings)


def assistant_role_grants(*, writes: bool) -> tuple[str, ...]:
    """The predefined roles an assistant role is granted: reads, and writes when allowed."""
    return ("pg_read_all_data", "pg_write_all_data") if writes else ("pg_read_all_data",)


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted (for SQL shown to people and run by scripts)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A PostgreSQL string literal under standard_conforming_strings (the default since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def assistant_role_sql(
    role: str,
    password_sql: str,
    *,
    writes: bool,
    limits: AssistantLimits | None = None,
    exists: bool = False,
) -> list[str]:
    """The statements that create (or, ``exists``, update) an assistant role, in order.

    ``password_sql`` is the SQL of the password: a literal (a SCRAM verifier computed by the
    client keeps the plaintext out of the server's logs), or a psql variable (``:'pw'``).
    The role logs in, inherits only the grants listed, is never a superuser and cannot
    create roles, databases or replication connections.
    """
    limits = limits or AssistantLimits()
    ident = quote_ident(role)
    verb = "ALTER" if exists else "CREATE"
    statements = [
        f"{verb} ROLE {ident} WITH LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION "
        f"NOBYPASSRLS INHERIT PASSWORD {password_sql}",
        f"GRANT {', '.join(assistant_role_grants(writes=writes))} TO {ident}",
    ]
    statements += [
        f"ALTER ROLE {ident} SET {name} = {quote_literal(value)}"
        for name, value in assistant_role_settings(writes=writes, limits=limits)
    ]
    return statements


__all__ = [
    "ASSISTANT_APPLICATION_NAME",
    "ASSISTANT_READ",
    "ASSISTANT_READ_AS_OPERATIONS",
    "ASSISTANT_ROLE",
    "ASSISTANT_WRITE",
    "ASSISTANT_WRITE_AS_OPERATIONS",
    "ASSISTANT_WRITE_ROLE",
    "OPERATIONS",
    "PURPOSES",
    "AssistantLimits",
    "Purpose",
    "assistant_purpose",
    "assistant_role_grants",
    "assistant_role_settings",
    "assistant_role_sql",
    "session_settings",
]
