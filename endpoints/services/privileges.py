"""What an assistant role may do, read from the server: is it safe to serve an assistant with?

``manage.py run_mcp`` connects with each cluster's assistant role (and, with
``--allow-writes``, its write role) before it serves the cluster, and refuses a role that
could read the server's secrets or files: a superuser, a role that can grant itself
membership (CREATEROLE) or start replication connections, a member of the predefined
roles that read settings, statistics of other sessions or server files, or a role allowed
to call the file-reading functions. :func:`check_role` reads all that in one query;
:class:`RoleReport` decides (pure).
"""

from __future__ import annotations

from dataclasses import dataclass

from endpoints import routing
from endpoints.core.purposes import Purpose
from endpoints.core.vocabulary import Intent

# Predefined roles an assistant must not have the privileges of, and why.
UNSAFE_MEMBERSHIPS: dict[str, str] = {
    "pg_read_all_settings": "reads every setting, primary_conninfo's password included",
    "pg_monitor": "includes pg_read_all_settings and pg_read_all_stats",
    "pg_read_all_stats": "reads other sessions' SQL text, which may carry passwords",
    "pg_read_server_files": "reads any file the server can read",
    "pg_write_server_files": "writes any file the server can write",
    "pg_execute_server_program": "runs programs on the database server",
    "pg_signal_backend": "ends other sessions",
}
# Functions that read server files; superuser-only unless someone granted them.
FILE_FUNCTIONS = ("pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file")

# One round trip: the role's attributes, unsafe memberships, file functions it may call,
# and up to five tables it may change (enough to make the point).
ROLE_SQL = """
SELECT current_user::text AS name,
       r.rolsuper AS superuser,
       r.rolcreaterole AS create_role,
       r.rolreplication AS replication,
       ARRAY(SELECT m FROM unnest(%(memberships)s::text[]) AS m
             WHERE pg_has_role(current_user, m, 'MEMBER') ORDER BY 1) AS memberships,
       ARRAY(SELECT DISTINCT p.proname::text FROM pg_proc p
             WHERE p.proname = ANY(%(functions)s::text[])
               AND p.pronamespace = 'pg_catalog'::regnamespace
               AND has_function_privilege(p.oid, 'EXECUTE') ORDER BY 1) AS file_functions,
       ARRAY(
           SELECT format('%%I.%%I', n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_toast%%'
             AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
           ORDER BY 1
           LIMIT 5
       ) AS writable_tables
FROM pg_roles r
WHERE r.rolname = current_user
"""
CHECK_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class RoleReport:
    """What one role may do on a cluster; :meth:`problems` says why it is unsafe, if it is."""

    name: str
    superuser: bool
    create_role: bool = False
    replication: bool = False
    memberships: tuple[str, ...] = ()
    file_functions: tuple[str, ...] = ()
    writable_tables: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """Why an assistant must not use this role; empty when it is safe."""
        found = []
        if self.superuser:
            found.append(f"role {self.name} is a superuser: it reads every secret and file")
            return found  # everything below follows from it
        if self.create_role:
            found.append(f"role {self.name} has CREATEROLE: it can grant itself any role")
        if self.replication:
            found.append(f"role {self.name} has REPLICATION: it can copy the whole cluster")
        for membership in self.memberships:
            reason = UNSAFE_MEMBERSHIPS.get(membership, "is a privileged predefined role")
            found.append(f"role {self.name} is a member of {membership}, which {reason}")
        if self.file_functions:
            found.append(
                f"role {self.name} may call {', '.join(self.file_functions)}, which read "
                "server files"
            )
        return found

    @property
    def safe(self) -> bool:
        return not self.problems()

    def notes(self, *, writes: bool) -> list[str]:
        """What an operator should hear although the role is safe (a read role that writes)."""
        if writes or not self.writable_tables:
            return []
        return [
            f"role {self.name} may also write to tables ({', '.join(self.writable_tables)}); "
            "reads still run in READ ONLY transactions, but a role with pg_read_all_data alone "
            "is the least privilege"
        ]


def check_role(cluster: str, purpose: Purpose) -> RoleReport:
    """Connect as ``purpose``'s role to ``cluster`` and read what it may do.

    Raises the routing errors (the cluster is unreachable, the role cannot log in...).
    """
    result = routing.execute(
        cluster,
        ROLE_SQL,
        {"memberships": list(UNSAFE_MEMBERSHIPS), "functions": list(FILE_FUNCTIONS)},
        intent=Intent.READ,
        read_only=True,
        timeout_ms=CHECK_TIMEOUT_MS,
        purpose=purpose,
    )
    row = result.rows[0]
    return RoleReport(
        name=row["name"],
        superuser=bool(row["superuser"]),
        create_role=bool(row["create_role"]),
        replication=bool(row["replication"]),
        memberships=tuple(row["memberships"]),
        file_functions=tuple(row["file_functions"]),
        writable_tables=tuple(row["writable_tables"]),
    )
