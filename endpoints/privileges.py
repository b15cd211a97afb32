"""What the role a cluster's read path connects as may do, for start-up warnings.

An assistant's reads run in READ ONLY transactions, but the safest set-up is a
role that could not write even outside one: ``manage.py run_mcp`` warns (and
carries on) when the role is a superuser or holds write privileges.
"""

from __future__ import annotations

from dataclasses import dataclass

from endpoints import routing

# The role the routed reads connect as: superuser, CREATE on the database, and up to
# five tables it may change (enough to make the point).
ROLE_SQL = """
SELECT current_user::text,
       r.rolsuper,
       has_database_privilege(current_database(), 'CREATE'),
       ARRAY(
           SELECT format('%I.%I', n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_toast%%'
             AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
           ORDER BY 1
           LIMIT 5
       )
FROM pg_roles r
WHERE r.rolname = current_user
"""
CHECK_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class ReadRole:
    name: str
    superuser: bool
    can_create: bool
    writable_tables: tuple[str, ...]

    def warnings(self) -> list[str]:
        """What an operator should hear about this role; empty when it only reads."""
        found = []
        if self.superuser:
            found.append(f"role {self.name} is a superuser: it can do anything")
        if self.writable_tables:
            found.append(
                f"role {self.name} may write to tables ({', '.join(self.writable_tables)})"
            )
        if self.can_create and not self.superuser:
            found.append(f"role {self.name} may create schemas in the database")
        return found


def read_role(cluster: str) -> ReadRole:
    """The role routed reads of ``cluster`` connect as; raises routing errors."""
    result = routing.execute(
        cluster, ROLE_SQL, intent="read", read_only=True, timeout_ms=CHECK_TIMEOUT_MS
    )
    row = list(result.rows[0].values())
    return ReadRole(
        name=row[0], superuser=bool(row[1]), can_create=bool(row[2]), writable_tables=tuple(row[3])
    )
