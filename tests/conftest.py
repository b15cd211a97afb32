"""Shared fixtures and hooks; the helpers behind them live in ``tests/helpers/``.

The real servers (a PostgreSQL primary with two streaming replicas, Redis, Celery) are
session fixtures, so they start only when a collected test asks for one, once per
session, on free loopback ports, with the same code ``make run`` uses; they are torn
down at the end. Every test that needs one, directly or through another fixture, is
marked ``servers`` at collection, and every test that opens a local port through
``silent_port``/``closed_port`` is marked ``processes``: ``make test-unit`` (``pytest -m
"not servers and not processes"``) starts none of them (tests/helpers/markers.py).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from endpoints.devstack.localcluster import LocalPostgresCluster, LocalRedis, SilentListener
from tests.helpers import ROOT
from tests.helpers.cluster import running_cluster, running_redis
from tests.helpers.markers import (
    PROCESS_FIXTURES,
    SERVER_FIXTURES,
    ImpurityWatch,
    deselects_processes,
    deselects_servers,
)
from tests.helpers.registry import register_with_table_t
from tests.helpers.workers import CeleryDidNotStart, running_beat, running_worker


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``servers``/``processes`` every test whose fixtures start a server/a child or socket."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if SERVER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.servers)
        if PROCESS_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(autouse=True)
def _pure_tests_stay_pure(request: pytest.FixtureRequest) -> Iterator[None]:
    """In ``make test-unit``'s run, fail a test that opened a network socket or a child."""
    markexpr = request.config.getoption("markexpr") or ""
    if not (deselects_servers(markexpr) and deselects_processes(markexpr)):
        yield
        return
    from django.conf import settings

    redis_url = urlsplit(settings.REDIS_URL)
    watch = ImpurityWatch(refused_at=[(redis_url.hostname or "", redis_url.port or 6379)])
    watch.install(request.getfixturevalue("monkeypatch"))
    yield
    complaint = watch.complaint(request.node.nodeid)
    if complaint:
        pytest.fail(complaint)


def _refuse_without_servers(request: pytest.FixtureRequest) -> None:
    """Fail the test that asked for a server fixture in a run that left servers out.

    Only a test that reached the fixture past the marker (``request.getfixturevalue``)
    gets here; starting the cluster anyway would make ``make test-unit`` slow and wrong.
    """
    if deselects_servers(request.config.getoption("markexpr") or ""):
        pytest.fail(
            f"{request.fixturename} was requested in a run without servers: mark the test "
            "`pytest.mark.servers` (tests/helpers/markers.py)"
        )


@pytest.fixture(scope="session")
def pg_cluster(request: pytest.FixtureRequest) -> Iterator[LocalPostgresCluster]:
    """A primary and two streaming replicas, shared by the whole session."""
    _refuse_without_servers(request)
    with running_cluster("pgwarden-test-cluster-", replicas=2) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[LocalRedis]:
    """A redis-server on the loopback port that the test settings' REDIS_URL names."""
    _refuse_without_servers(request)
    from django.conf import settings

    with running_redis(settings.REDIS_URL) as redis:
        yield redis


@pytest.fixture
def local_cluster(db, pg_cluster):
    """Cluster ``local`` registered in the test database, as ``make run`` registers it."""
    from endpoints.services.registration import register_local_cluster

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


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, redis_server):
    """A real ``celery --app=project worker`` on the test broker and the test database.

    Tests that use it must be ``django_db(transaction=True)``: the worker is another
    process and sees only committed rows.
    """
    from project.celery import app

    options = [
        "--pool=solo",
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        f"--hostname=pgwarden-test-{os.getpid()}@%h",
    ]
    log_path = ROOT / "var" / f"test-celery-worker-{os.getpid()}.log"
    try:
        with running_worker(app, options, log_path):
            yield app
    except CeleryDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture
def celery_beat(celery_worker: Any, tmp_path: Path) -> Iterator[Any]:
    """A real ``celery beat`` with the project's schedule, for one test, feeding the worker."""
    with running_beat(tmp_path / "celerybeat-schedule", tmp_path / "beat.log") as beat:
        yield beat


@pytest.fixture
def fresh_router(redis_server: LocalRedis) -> Iterator[None]:
    """A router built for this test alone (pools, topology snapshot), closed after it."""
    from endpoints import routing

    routing.reset_router()
    yield
    routing.reset_router()


@pytest.fixture
def fresh(
    request: pytest.FixtureRequest, redis_server: LocalRedis
) -> Iterator[tuple[LocalPostgresCluster, Any]]:
    """A new primary + 2 replicas with a table ``t``, registered under a unique name.

    For tests that kill, promote or fence servers, which the shared cluster must never
    see; destroyed afterwards.
    """
    from endpoints import routing

    _refuse_without_servers(request)

    with running_cluster("pgwarden-fresh-", replicas=2) as local:
        try:
            yield local, register_with_table_t(local)
        finally:
            routing.reset_router()


@pytest.fixture
def pgwarden_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog, also hearing the "pgwarden" loggers (they do not propagate to the root)."""
    logger = logging.getLogger("pgwarden")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
