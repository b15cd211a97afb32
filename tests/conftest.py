"""Shared fixtures: a real PostgreSQL primary with two streaming replicas and a real Redis.

Both are started once per test session on free loopback ports, with the same
code ``make run`` uses (endpoints.devstack.localcluster), and torn down at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoints.devstack.localcluster import (
    LocalPostgresCluster,
    LocalRedis,
    SilentListener,
    local_redis_for_url,
)

ROOT = Path(__file__).resolve().parent.parent


def _scratch_dir(prefix: str) -> Path:
    # Under /tmp rather than pytest's tmp_path: the postgres OS user must traverse it.
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalPostgresCluster]:
    """A primary and two streaming replicas, shared by the whole session."""
    # The mkdtemp dir itself is the base dir: the cluster hands it to the postgres OS user,
    # while a directory inside it would sit behind mkdtemp's mode 0700.
    cluster = LocalPostgresCluster(_scratch_dir("pgwarden-test-cluster-"), replicas=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """A redis-server on the loopback port that the test settings' REDIS_URL names."""
    from django.conf import settings

    base = _scratch_dir("pgwarden-test-redis-")
    redis = local_redis_for_url(settings.REDIS_URL, base)
    assert redis is not None, f"test REDIS_URL {settings.REDIS_URL} is not on loopback"
    try:
        redis.start()
        yield redis
    finally:
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def local_cluster(db, pg_cluster):
    """Cluster ``local`` registered in the test database, as ``make run`` registers it."""
    from endpoints.devstack.localstack import register_local_cluster

    return register_local_cluster(pg_cluster).cluster


@pytest.fixture
def admin_client(db, client):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.force_login(user)
    return client


@pytest.fixture
def silent_port() -> Iterator[int]:
    listener = SilentListener()
    yield listener.port
    listener.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_manage(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` the way an operator does, in a child process."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, redis_server):
    """A real ``celery --app=project worker`` on the test broker and the test database.

    Tests that use it must be ``django_db(transaction=True)``: the worker is another
    process and sees only committed rows.
    """
    from project.celery import app

    log_path = ROOT / "var" / f"test-celery-worker-{os.getpid()}.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "--app=project",
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
                f"--hostname=pgwarden-test-{os.getpid()}@%h",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Celery worker did not come up:\n{log_path.read_text()[-3000:]}")
        yield app
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log_path.unlink(missing_ok=True)


@pytest.fixture
def celery_beat(celery_worker, tmp_path):
    """A real ``celery beat`` with the project's schedule, for one test, feeding the worker."""
    log_path = tmp_path / "beat.log"
    with log_path.open("w") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "--app=project",
                "beat",
                "--loglevel=INFO",
                f"--schedule={tmp_path / 'celerybeat-schedule'}",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield beat
    finally:
        beat.terminate()
        try:
            beat.wait(timeout=20)
        except subprocess.TimeoutExpired:
            beat.kill()
            beat.wait()


@pytest.fixture
def fresh_router(redis_server: LocalRedis) -> Iterator[None]:
    """A router built for this test alone (pools, topology snapshot), closed after it."""
    from endpoints import routing

    routing.reset_router()
    yield
    routing.reset_router()


@pytest.fixture
def fresh(redis_server: LocalRedis) -> Iterator[tuple[LocalPostgresCluster, Any]]:
    """A new primary + 2 replicas with a table ``t``, registered under a unique name.

    For tests that kill, promote or fence servers, which the shared cluster must never
    see; destroyed afterwards.
    """
    import uuid

    import psycopg

    from endpoints import routing
    from endpoints.devstack.localstack import register_local_cluster

    local = LocalPostgresCluster(_scratch_dir("pgwarden-fresh-"), replicas=2)
    try:
        local.start()
        cluster = register_local_cluster(local, f"fresh-{uuid.uuid4().hex[:8]}").cluster
        with psycopg.connect(**local.conninfo("primary"), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
        local.wait_for_replay()
        yield local, cluster
    finally:
        routing.reset_router()
        local.destroy()


def terminate_backend_running(
    pg_cluster: LocalPostgresCluster, query_like: str, timeout_s: float = 10.0
) -> None:
    """Kill the server backend running a query that matches ``query_like``, once it runs.

    Cuts a client's connection mid-statement, as a crash or a network failure would.
    """
    import psycopg

    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as admin:
        deadline = time.monotonic() + timeout_s
        while True:
            row = admin.execute(
                "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE %s AND state = 'active' AND pid <> pg_backend_pid()",
                [query_like],
            ).fetchone()
            if row and row[0]:
                return
            assert time.monotonic() < deadline, f"no query like {query_like!r} started"
            time.sleep(0.02)


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
