"""The MCP server: pgwarden's services as Model Context Protocol tools and resources.

Protocol only. Each tool parses its arguments (their JSON schema, descriptions
included, comes from the annotations below), calls one service in
``endpoints.services`` and returns its typed result, which the SDK publishes as the
tool's ``outputSchema`` and sends as structured output. Every failure reaches the client as
a tool error (``isError``) with one clear message (:func:`_tool_errors`): never
a traceback, a password or a connection string.

Which tools exist depends on what the operator allowed (:class:`BridgeConfig`):
reads always; ``execute``, ``transaction`` and ``explain(analyze)`` of a write
with writes allowed; ``check_health``, ``failover``, ``pause_failover``/``resume_failover``
and the endpoint edits with admin allowed. A tool that is not allowed is not listed at all.

Least privilege: ``--cluster`` is a scope (any other cluster is refused), and tools that
run SQL connect with the cluster's assistant role (writes: its assistant write role),
never with the operations role, as :class:`endpoints.services.assistant.AccessPolicy` decides. The
SQL read tools are listed only when some cluster in scope has a usable role; the write
tools likewise. At most ``max_concurrent_queries`` SQL tool calls run at once; more are
refused as busy at once. With ``allow_unsafe`` every answer carries a ``warning``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import close_old_connections
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from endpoints import routing
from endpoints.core.crypto import redact
from endpoints.core.vocabulary import Role
from endpoints.models import Cluster
from endpoints.services import catalog, fleet, queries
from endpoints.services.assistant import (
    UNSAFE_FLAG,
    Access,
    AccessPolicy,
    AccessRefused,
    QuerySlots,
)
from endpoints.services.results import Answer
from mcpbridge.serving import lowlevel_server
from mcpbridge.stdio import stdio_streams

logger = logging.getLogger("pgwarden.mcp")

INSTRUCTIONS = """\
pgwarden routes SQL across a PostgreSQL cluster (a primary and streaming replicas) and
watches its health. `query` runs one read-only statement (on a replica when the cluster's
read preference allows) inside a READ ONLY transaction that is always rolled back; start
with list_schemas, list_tables and describe_table to learn the schema. cluster_status and
health_history show the fleet. Tools that write or operate the cluster are listed only
when the operator allowed them."""


@dataclass(frozen=True)
class BridgeConfig:
    """What the operator allowed, and the cluster a tool uses when it names none.

    ``scope``: the only cluster served (``--cluster``); None serves every cluster, and
    ``default`` is then the one a tool uses when it names none (the only cluster, if there
    is one). ``sql_reads``/``sql_writes``: whether any cluster in scope may be read/written
    by SQL (the start-up checks say). ``allow_unsafe``: serve clusters whose assistant role
    is missing or privileged anyway, saying so in every answer.
    """

    scope: str | None = None
    allow_writes: bool = False
    allow_admin: bool = False
    allow_unsafe: bool = False
    default: str | None = None
    sql_reads: bool = True
    sql_writes: bool = True
    max_concurrent_queries: int = 4


# Argument types: the descriptions end up in each tool's input schema.
Sql = Annotated[str, Field(description="One SQL statement.", min_length=1)]
Params = Annotated[
    list[Any] | dict[str, Any] | None,
    Field(
        description="Query parameters: a list for %s placeholders, an object for "
        "%(name)s placeholders. Never build SQL from values: pass them here."
    ),
]
ClusterName = Annotated[
    str | None,
    Field(description="Cluster name; omitted: the server's default cluster."),
]
ReadPreference = Annotated[
    str | None,
    Field(
        description="Where reads go: primary, primary_preferred, secondary, "
        "secondary_preferred or nearest; omitted: the cluster's setting."
    ),
]
MaxRows = Annotated[
    int,
    Field(
        description="At most this many rows are returned (truncated is then true).",
        ge=1,
        le=queries.MAX_ROWS_LIMIT,
    ),
]
TimeoutMs = Annotated[
    int,
    Field(
        description="Statement timeout on the server, in milliseconds; at most the server's "
        "PGWARDEN_MCP_MAX_TIMEOUT_MS (60000 unless configured).",
        ge=1,
        le=3_600_000,
    ),
]
EndpointName = Annotated[str, Field(description="Endpoint name, as registered.", min_length=1)]

AnswerT = TypeVar("AnswerT", bound=Answer)
_Tool = TypeVar("_Tool", bound=Callable[..., Any])


class _Bridge:
    def __init__(self, config: BridgeConfig, policy: AccessPolicy) -> None:
        self.config = config
        self.policy = policy
        self.slots = QuerySlots(config.max_concurrent_queries)

    def cluster(self, name: str | None) -> str:
        """The cluster a call is about: its argument, else the default, else the only one.

        A cluster outside the server's scope (``--cluster``) is refused.
        """
        scope = self.config.scope
        if name:
            if scope is not None and name != scope:
                raise ToolError(
                    f"cluster: {name!r} is out of scope: this server serves only cluster "
                    f"{scope!r} (run_mcp --cluster {scope})"
                )
            return name
        if scope is not None:
            return scope
        if self.config.default:
            return self.config.default
        names = list(Cluster.objects.order_by("name").values_list("name", flat=True))
        if len(names) == 1:
            return names[0]
        known = ", ".join(names) if names else "none is registered"
        raise ToolError(f"cluster: no default cluster, so name one (known: {known})")

    def access(self, name: str | None, *, writes: bool = False) -> Access:
        """How a SQL tool reaches the cluster: its assistant role, checked (AccessRefused)."""
        return self.policy.access(self.cluster(name), writes=writes)

    def answer(self, result: AnswerT, access: Access | None = None) -> AnswerT:
        """``result`` with the unsafe-mode warning every answer carries when it applies."""
        warning = (access.warning if access is not None else "") or self.warning()
        return result.warned(warning)

    def warning(self) -> str:
        """What every answer (and error) says in unsafe mode; empty otherwise."""
        if not self.config.allow_unsafe:
            return ""
        return (
            f"UNSAFE: this server was started with {UNSAFE_FLAG}: clusters without a "
            "least-privilege assistant role are served with privileged roles"
        )


@contextmanager
def _tool_errors(tool: str, warning: str = "") -> Iterator[None]:
    """Turn pgwarden's errors into tool errors whose message the client sees.

    ``warning`` (the unsafe mode's) starts every error message, as it is in every answer.
    """
    close_old_connections()
    try:
        yield
    except Exception as exc:
        error = exc if isinstance(exc, ToolError) else _as_tool_error(tool, exc)
        if warning:
            raise ToolError(f"{warning}. {error}") from None
        raise error from None
    finally:
        close_old_connections()


def _as_tool_error(tool: str, exc: Exception) -> ToolError:
    """One clear line for the client; connection-string passwords masked."""
    if isinstance(exc, routing.WriteOutcomeUnknown):
        return ToolError(f"write outcome unknown: {redact(str(exc))}")
    if isinstance(exc, routing.RoutingError):
        # Refused (the guard), QueryError (PostgreSQL's message and SQLSTATE),
        # NoEndpointAvailable (each endpoint's reason), ClusterNotFound (the known
        # clusters), AccessRefused (what role to create), AssistantBusy.
        return ToolError(redact(str(exc)))
    if isinstance(exc, fleet.FailoverError):
        return ToolError(f"failover refused: {redact(str(exc))}")
    if isinstance(exc, ValidationError):
        return ToolError(f"invalid input: {redact('; '.join(_messages(exc)))}")
    if isinstance(exc, ValueError | TypeError | LookupError):
        return ToolError(f"invalid argument: {redact(str(exc))}")
    # A bug or an outage we did not foresee: the log gets the traceback (secrets scrubbed by
    # the logging filter), the client one line.
    logger.error("tool %s failed", tool, exc_info=exc)
    return ToolError(f"{tool} failed: {type(exc).__name__} (details in the server's log)")


def _messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items()]
    return list(exc.messages)


READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
OPERATE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
)
# Changes one setting, which the other tool undoes; doing it twice is doing it once.
TOGGLE = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


class PgwardenServer(MCPServer):
    """The SDK's server, served on stdio by :mod:`mcpbridge.stdio` (no thread per message).

    The session runs on the SDK's public low-level server, answering with this server's
    tools and resources (:func:`mcpbridge.serving.lowlevel_server`).
    """

    async def run_stdio_async(self) -> None:
        session = lowlevel_server(self)
        async with stdio_streams() as (read_stream, write_stream):
            await session.run(read_stream, write_stream, session.create_initialization_options())


def build_server(config: BridgeConfig, policy: AccessPolicy | None = None) -> PgwardenServer:
    """The MCP server for ``config``: its tools, and the cluster resources.

    ``policy`` decides which role each SQL tool call uses (one that allows nothing unsafe,
    unless ``config.allow_unsafe``, when none is given).
    """
    server = PgwardenServer(name="pgwarden", instructions=INSTRUCTIONS)
    bridge = _Bridge(config, policy or AccessPolicy(allow_unsafe=config.allow_unsafe))
    adders: list[Callable[[MCPServer, _Bridge], None]] = []
    if config.sql_reads:
        adders += [_add_query, _add_explain, _add_catalog_tools]
    adders += [_add_fleet_read_tools]
    if config.allow_writes and config.sql_writes:
        adders += [_add_write_tools]
    if config.allow_admin:
        adders += [_add_operation_tools, _add_endpoint_tool, _add_endpoint_change_tools]
    for add in adders:
        add(server, bridge)
    _add_resources(server, bridge)
    return server


def _tool(
    server: MCPServer, annotations: ToolAnnotations, title: str | None = None
) -> Callable[[_Tool], _Tool]:
    """``server.tool``: its output schema from the return type, or it does not register."""
    return server.tool(title=title, annotations=annotations, structured_output=True)


def _add_query(server: MCPServer, bridge: _Bridge) -> None:
    @_tool(server, READ)
    def query(
        sql: Sql,
        params: Params = None,
        cluster: ClusterName = None,
        read_preference: ReadPreference = None,
        max_rows: MaxRows = queries.DEFAULT_MAX_ROWS,
        timeout_ms: TimeoutMs = queries.DEFAULT_TIMEOUT_MS,
    ) -> queries.ReadResult:
        """Run one read-only SQL statement and return its rows.

        The statement must be a read (SELECT, VALUES, TABLE, SHOW, EXPLAIN): anything
        else is refused before it is sent, as are functions that read server files or
        reach other servers and catalogs or settings that hold secrets. It runs in a READ
        ONLY transaction that is always rolled back, with the statement timeout set, as
        the cluster's least-privilege assistant role. Values come back JSON-safe: numeric
        as strings, timestamps in ISO 8601, bytea in base64, json as values.
        """
        with _sql_call(bridge, "query", cluster) as access:
            result = queries.read_query(
                access.cluster,
                sql,
                params,
                read_preference=read_preference,
                max_rows=max_rows,
                timeout_ms=timeout_ms,
                purpose=access.purpose,
            )
            return bridge.answer(result, access)


def _add_explain(server: MCPServer, bridge: _Bridge) -> None:
    allow_writes = bridge.config.allow_writes

    @_tool(server, READ)
    def explain(
        sql: Sql,
        params: Params = None,
        analyze: Annotated[
            bool,
            Field(
                description="Run the statement to measure it (EXPLAIN ANALYZE). Reads only, "
                "unless writes are allowed; a write is then rolled back."
            ),
        ] = False,
        cluster: ClusterName = None,
        timeout_ms: TimeoutMs = queries.DEFAULT_TIMEOUT_MS,
    ) -> queries.ExplainResult:
        """The query plan of one statement, as PostgreSQL's JSON plan."""
        with _sql_call(bridge, "explain", cluster) as access:
            write_purpose = access.purpose
            if allow_writes:
                # Used only if the statement writes (to plan it, or to run and roll it back);
                # without a write role the read role's session refuses it.
                with contextlib.suppress(AccessRefused):
                    write_purpose = bridge.access(access.cluster, writes=True).purpose
            result = queries.explain(
                access.cluster,
                sql,
                params,
                analyze=analyze,
                allow_writes=allow_writes,
                timeout_ms=timeout_ms,
                purpose=access.purpose,
                write_purpose=write_purpose,
            )
            return bridge.answer(result, access)


def _add_catalog_tools(server: MCPServer, bridge: _Bridge) -> None:
    @_tool(server, READ)
    def list_schemas(cluster: ClusterName = None) -> catalog.SchemaList:
        """The cluster's schemas (system schemas left out), with their owner and table count."""
        with _sql_call(bridge, "list_schemas", cluster) as access:
            schemas = catalog.list_schemas(access.cluster, purpose=access.purpose)
            return bridge.answer(schemas, access)

    @_tool(server, READ)
    def list_tables(
        schema: Annotated[
            str | None, Field(description="Only this schema; omitted: every user schema.")
        ] = None,
        cluster: ClusterName = None,
    ) -> catalog.TableList:
        """Tables, views and materialized views, with their kind and estimated row count."""
        with _sql_call(bridge, "list_tables", cluster) as access:
            tables = catalog.list_tables(access.cluster, schema, purpose=access.purpose)
            return bridge.answer(tables, access)

    @_tool(server, READ)
    def describe_table(
        table: Annotated[str, Field(description="Table name, or schema.table.", min_length=1)],
        schema: Annotated[str | None, Field(description="The table's schema.")] = None,
        cluster: ClusterName = None,
    ) -> catalog.TableDescription:
        """A table's columns (type, nullability, default), keys, foreign keys and indexes."""
        with _sql_call(bridge, "describe_table", cluster) as access:
            described = catalog.describe_table(
                access.cluster, table, schema, purpose=access.purpose
            )
            return bridge.answer(described, access)

    @_tool(server, READ)
    def database_info(cluster: ClusterName = None) -> fleet.DatabaseInfo:
        """Per endpoint: server version, database, user, connections, role, pool settings."""
        with _sql_call(bridge, "database_info", cluster) as access:
            info = fleet.database_info(access.cluster, purpose=access.purpose)
            return bridge.answer(info, access)


@contextmanager
def _sql_call(
    bridge: _Bridge, tool: str, cluster: str | None, *, writes: bool = False
) -> Iterator[Access]:
    """A SQL tool call: its errors as tool errors, its access checked, a query slot held."""
    with _tool_errors(tool, bridge.warning()):
        access = bridge.access(cluster, writes=writes)
        with bridge.slots.slot():
            yield access


def _add_fleet_read_tools(server: MCPServer, bridge: _Bridge) -> None:
    @_tool(server, READ)
    def cluster_status(cluster: ClusterName = None) -> fleet.ClusterStatus:
        """Endpoints with role, state, health score, latency, lag, circuit and pool; totals."""
        with _tool_errors("cluster_status", bridge.warning()):
            return bridge.answer(fleet.cluster_status(bridge.cluster(cluster)))

    @_tool(server, READ)
    def health_history(
        endpoint: EndpointName,
        cluster: ClusterName = None,
        since_minutes: Annotated[
            int, Field(description="How far back, in minutes.", ge=1, le=10_080)
        ] = 60,
        limit: Annotated[int, Field(description="At most this many checks.", ge=1, le=1000)] = 100,
    ) -> fleet.HealthHistory:
        """An endpoint's recent health checks, newest first, with a summary."""
        with _tool_errors("health_history", bridge.warning()):
            history = fleet.health_history(
                bridge.cluster(cluster), endpoint, since_minutes=since_minutes, limit=limit
            )
            return bridge.answer(history)


def _add_write_tools(server: MCPServer, bridge: _Bridge) -> None:
    @_tool(server, WRITE)
    def execute(
        sql: Sql,
        params: Params = None,
        cluster: ClusterName = None,
        timeout_ms: TimeoutMs = queries.DEFAULT_TIMEOUT_MS,
    ) -> queries.WriteResult:
        """Run one statement on the primary and commit it: rows_affected, RETURNING rows.

        It runs as the cluster's assistant write role. If the connection is lost after the
        statement was sent, the outcome is unknown and reported as such: it is never
        retried.
        """
        with _sql_call(bridge, "execute", cluster, writes=True) as access:
            result = queries.write_statement(
                access.cluster, sql, params, timeout_ms=timeout_ms, purpose=access.purpose
            )
            return bridge.answer(result, access)

    @_tool(server, WRITE)
    def transaction(
        statements: Annotated[
            list[dict[str, Any]],
            Field(
                description='Statements run in order in one transaction: [{"sql": "...", '
                '"params": [...]}]. All are committed, or none.',
                min_length=1,
            ),
        ],
        cluster: ClusterName = None,
        timeout_ms: TimeoutMs = queries.DEFAULT_TIMEOUT_MS,
    ) -> queries.TransactionResult:
        """Run statements atomically on the primary; on an error, nothing is committed."""
        with _sql_call(bridge, "transaction", cluster, writes=True) as access:
            result = queries.write_transaction(
                access.cluster, statements, timeout_ms=timeout_ms, purpose=access.purpose
            )
            return bridge.answer(result, access)


def _add_operation_tools(server: MCPServer, bridge: _Bridge) -> None:
    warning = bridge.warning()

    @_tool(server, READ)
    def check_health(cluster: ClusterName = None) -> fleet.HealthSweep:
        """Probe every endpoint of the cluster now and record the results."""
        with _tool_errors("check_health", warning):
            return bridge.answer(fleet.check_health(bridge.cluster(cluster)))

    @_tool(server, OPERATE)
    def failover(
        cluster: ClusterName = None,
        to: Annotated[
            str | None,
            Field(description="Replica to promote; omitted: the most up-to-date one."),
        ] = None,
        switchover: Annotated[
            bool,
            Field(
                description="Graceful: the primary stops taking writes and the replica "
                "catches up before it is promoted, so nothing is lost."
            ),
        ] = False,
    ) -> fleet.FailoverEventRecord:
        """Promote a replica to primary now (or switch over gracefully); fences the old one.

        Only a replica seen streaming from the current primary can be promoted.
        """
        with _tool_errors("failover", warning):
            event = fleet.failover(bridge.cluster(cluster), to=to, switchover=switchover)
            return bridge.answer(event)

    @_tool(server, TOGGLE, title="Pause automatic failover")
    def pause_failover(
        cluster: ClusterName = None,
        reason: Annotated[
            str,
            Field(description="Why (shown in banners, alerts and cluster_status).", max_length=150),
        ] = "",
    ) -> fleet.PauseRecord:
        """Pause automatic failover of the cluster for maintenance, until resume_failover.

        Health checks and alerts go on (a primary down while paused raises an alert);
        a manual failover still works.
        """
        with _tool_errors("pause_failover", warning):
            return bridge.answer(fleet.pause_failover(bridge.cluster(cluster), reason))

    @_tool(server, TOGGLE, title="Resume automatic failover")
    def resume_failover(cluster: ClusterName = None) -> fleet.PauseRecord:
        """Resume automatic failover of the cluster: a primary that is down is replaced."""
        with _tool_errors("resume_failover", warning):
            return bridge.answer(fleet.resume_failover(bridge.cluster(cluster)))


def _add_endpoint_tool(server: MCPServer, bridge: _Bridge) -> None:
    warning = bridge.warning()

    @_tool(server, OPERATE)
    def add_endpoint(
        name: EndpointName,
        host: Annotated[
            str, Field(description="One host name or IP address (no socket path).", min_length=1)
        ],
        port: Annotated[int, Field(description="TCP port.", ge=1, le=65535)] = 5432,
        role: Annotated[Role, Field(description="primary or replica.")] = Role.REPLICA,
        weight: Annotated[
            int, Field(description="Load-balancing weight; 0 takes no reads.", ge=0)
        ] = 100,
        dbname: Annotated[
            str | None, Field(description="Database; omitted: the primary's.")
        ] = None,
        user: Annotated[str | None, Field(description="User; omitted: the primary's.")] = None,
        password: Annotated[
            str | None,
            Field(
                description="Password, stored encrypted. Required for a new address: a "
                "stored password is reused only for the host and port it was registered for."
            ),
        ] = None,
        enabled: Annotated[bool, Field(description="Take traffic at once.")] = True,
        cluster: ClusterName = None,
    ) -> fleet.EndpointRecord:
        """Register an endpoint in the cluster (validated as the admin does; logged)."""
        with _tool_errors("add_endpoint", warning):
            added = fleet.add_endpoint(
                bridge.cluster(cluster),
                name=name,
                host=host,
                port=port,
                role=role,
                weight=weight,
                dbname=dbname,
                user=user,
                password=password,
                enabled=enabled,
            )
            return bridge.answer(added)


def _add_endpoint_change_tools(server: MCPServer, bridge: _Bridge) -> None:
    warning = bridge.warning()

    @_tool(server, OPERATE)
    def remove_endpoint(name: EndpointName, cluster: ClusterName = None) -> fleet.EndpointRemoved:
        """Remove an endpoint (not the primary): routers drain and close its pools."""
        with _tool_errors("remove_endpoint", warning):
            return bridge.answer(fleet.remove_endpoint(bridge.cluster(cluster), name))

    @_tool(server, OPERATE)
    def set_endpoint(
        name: EndpointName,
        weight: Annotated[int | None, Field(description="New load-balancing weight.", ge=0)] = None,
        enabled: Annotated[bool | None, Field(description="Take traffic or not.")] = None,
        cluster: ClusterName = None,
    ) -> fleet.EndpointChanged:
        """Change an endpoint's weight or enable/disable it (validated; logged)."""
        with _tool_errors("set_endpoint", warning):
            changed = fleet.set_endpoint(
                bridge.cluster(cluster), name, weight=weight, enabled=enabled
            )
            return bridge.answer(changed)


def _add_resources(server: MCPServer, bridge: _Bridge) -> None:
    @server.resource(
        "pgwarden://clusters/{name}/status",
        mime_type="application/json",
        description="The same as the cluster_status tool.",
    )
    def cluster_status_resource(name: str) -> str:
        return _resource_json(
            "status", lambda: bridge.answer(fleet.cluster_status(bridge.cluster(name)))
        )

    @server.resource(
        "pgwarden://clusters/{name}/schema",
        mime_type="application/json",
        description="Every user table and view with its columns and their types.",
    )
    def cluster_schema_resource(name: str) -> str:
        def read() -> catalog.SchemaOverview:
            access = bridge.access(name)
            with bridge.slots.slot():
                overview = catalog.schema_overview(access.cluster, purpose=access.purpose)
            return bridge.answer(overview, access)

        return _resource_json("schema", read)


def _resource_json(kind: str, read: Callable[[], Answer]) -> str:
    try:
        with _tool_errors(f"{kind} resource"):
            return json.dumps(read().as_json(), indent=2)
    except ToolError as exc:
        raise ResourceError(str(exc)) from None
