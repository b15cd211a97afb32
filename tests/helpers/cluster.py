"""Real servers for tests: local PostgreSQL clusters and Redis on free loopback ports.

The same code ``make run`` uses (``endpoints.devstack.localcluster``). Contract: each
context manager starts its server under a fresh scratch directory in /tmp, yields it
running, and on exit stops it and deletes its data, whatever happened inside. Nothing
here imports Django.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster, LocalRedis, local_redis_for_url


def scratch_dir(prefix: str) -> Path:
    """A new, empty directory under /tmp (mode 0700) named ``prefix...``."""
    # Under /tmp rather than pytest's tmp_path: the postgres OS user must traverse it.
    return Path(tempfile.mkdtemp(prefix=prefix))


@contextmanager
def running_cluster(prefix: str, *, replicas: int = 2) -> Iterator[LocalPostgresCluster]:
    """A primary and ``replicas`` streaming replicas, destroyed on exit."""
    # The mkdtemp dir itself is the base dir: the cluster hands it to the postgres OS user,
    # while a directory inside it would sit behind mkdtemp's mode 0700.
    cluster = LocalPostgresCluster(scratch_dir(prefix), replicas=replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@contextmanager
def running_redis(url: str) -> Iterator[LocalRedis]:
    """A redis-server on the loopback port ``url`` names, stopped and deleted on exit."""
    base = scratch_dir("pgwarden-test-redis-")
    try:
        redis = local_redis_for_url(url, base)
        if redis is None:
            raise ValueError(f"test REDIS_URL {url} is not on loopback")
        try:
            redis.start()
            yield redis
        finally:
            redis.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def terminate_backend_running(
    pg_cluster: LocalPostgresCluster, query_like: str, timeout_s: float = 10.0
) -> None:
    """Kill the server backend running a query that matches ``query_like``, once it runs.

    Cuts a client's connection mid-statement, as a crash or a network failure would.
    """
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as admin:

        def terminated_one() -> bool:
            row = admin.execute(
                "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE %s AND state = 'active' AND pid <> pg_backend_pid()",
                [query_like],
            ).fetchone()
            return bool(row and row[0])

        assert poll_until(terminated_one, timeout_s=timeout_s, interval_s=0.02), (
            f"no query like {query_like!r} started"
        )
