"""Test data in the control database: endpoints and freshly started clusters, registered.

Contract: needs Django set up and a database the test may write (``db`` or
``transactional_db``). Django models are imported inside the functions: conftest imports
this module before pytest-django has set Django up.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from endpoints.devstack.localcluster import LocalPostgresCluster


def add_endpoint(
    cluster: Any,
    name: str,
    port: int,
    *,
    role: str = "replica",
    state: str = "unknown",
    user: str | None = None,
    password: str | None = None,
) -> Any:
    """An endpoint on 127.0.0.1:``port`` with the cluster primary's credentials.

    ``user``/``password`` override them; ``state`` is set as a sweep would have left it.
    """
    from endpoints.models import Endpoint, Role

    template = cluster.endpoints.filter(role=Role.PRIMARY).first()
    endpoint = Endpoint(
        cluster=cluster,
        name=name,
        host="127.0.0.1",
        port=port,
        role=role,
        sslmode="disable",
        dbname=template.dbname if template else "postgres",
        user=user or (template.user if template else "postgres"),
        password_encrypted=template.password_encrypted if template else "",
    )
    if password is not None:
        endpoint.set_password(password)
    endpoint.save()
    if state != "unknown":
        Endpoint.objects.filter(pk=endpoint.pk).update(state=state)
    return endpoint


def register_with_table_t(local: LocalPostgresCluster) -> Any:
    """Register ``local`` under a unique name, with a table ``t`` replicated everywhere.

    Returns the registered ``Cluster``.
    """
    from endpoints.services.registration import register_local_cluster

    cluster = register_local_cluster(local, f"fresh-{uuid.uuid4().hex[:8]}").cluster
    with psycopg.connect(**local.conninfo("primary"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    local.wait_for_replay()
    return cluster
