"""Who an assistant connects as (services.assistant, services.privileges), on the real cluster."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from endpoints import routing
from endpoints.core.crypto import Secret
from endpoints.core.purposes import (
    ASSISTANT_READ,
    ASSISTANT_READ_AS_OPERATIONS,
    ASSISTANT_WRITE,
)
from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.services import assistant, privileges
from endpoints.services.assistant import AccessPolicy, AccessRefused, AssistantBusy, QuerySlots
from endpoints.services.registration import RoleSpec, register_cluster

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_router")]


# What a role may do (pure)


def test_a_least_privilege_role_has_no_problem() -> None:
    assert privileges.RoleReport("reader", superuser=False).safe


@pytest.mark.parametrize(
    ("report", "problem"),
    [
        (privileges.RoleReport("r", superuser=True), "is a superuser"),
        (privileges.RoleReport("r", superuser=False, create_role=True), "CREATEROLE"),
        (privileges.RoleReport("r", superuser=False, replication=True), "REPLICATION"),
        (
            privileges.RoleReport("r", superuser=False, memberships=("pg_read_all_settings",)),
            "member of pg_read_all_settings, which reads every setting",
        ),
        (
            privileges.RoleReport("r", superuser=False, memberships=("pg_monitor",)),
            "member of pg_monitor",
        ),
        (
            privileges.RoleReport("r", superuser=False, file_functions=("pg_read_file",)),
            "may call pg_read_file",
        ),
    ],
)
def test_each_unsafe_privilege_is_named(report: privileges.RoleReport, problem: str) -> None:
    assert not report.safe
    assert any(problem in line for line in report.problems())


def test_a_read_role_that_may_write_is_safe_but_noted() -> None:
    report = privileges.RoleReport("r", superuser=False, writable_tables=("public.t",))
    assert report.safe
    assert "public.t" in report.notes(writes=False)[0]
    assert report.notes(writes=True) == []


# What the server says of the local cluster's roles


def test_the_local_roles_are_least_privilege_and_the_operations_role_is_not(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    reader = privileges.check_role("local", ASSISTANT_READ)
    writer = privileges.check_role("local", ASSISTANT_WRITE)
    operations = privileges.check_role("local", ASSISTANT_READ_AS_OPERATIONS)

    assert (reader.name, reader.safe) == (pg_cluster.assistant_user, True)
    assert (writer.name, writer.safe) == (pg_cluster.assistant_write_user, True)
    assert operations.name == pg_cluster.user
    assert operations.superuser


def test_a_granted_settings_role_is_seen_at_once(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    grant = f"GRANT pg_read_all_settings TO {pg_cluster.assistant_user}"
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(grant)
    try:
        pg_cluster.wait_for_replay()
        report = privileges.check_role("local", ASSISTANT_READ)
        assert report.memberships == ("pg_read_all_settings",)
        assert not report.safe
    finally:
        with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
            conn.execute(grant.replace("GRANT", "REVOKE").replace(" TO ", " FROM "))
        pg_cluster.wait_for_replay()


# The access policy


def test_a_usable_role_is_checked_once_and_given(local_cluster: Cluster) -> None:
    policy = AccessPolicy()

    first = policy.access("local")
    assert (first.purpose, first.warning) == (ASSISTANT_READ, "")
    started = time.perf_counter()
    assert policy.access("local") == first
    assert time.perf_counter() - started < 0.05  # no second round trip to the cluster
    assert policy.access("local", writes=True).purpose is ASSISTANT_WRITE


def test_a_read_role_that_may_also_write_is_served_with_a_note_for_the_operator(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    grant = f"GRANT pg_write_all_data TO {pg_cluster.assistant_user}"
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS assistant_note_t (id int)")
        conn.execute(grant)
    try:
        pg_cluster.wait_for_replay()
        check = AccessPolicy().check_at_start("local")
        assert check.usable
        assert "may also write to tables" in check.message
        assert "public.assistant_note_t" in check.message
    finally:
        with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
            conn.execute(grant.replace("GRANT", "REVOKE").replace(" TO ", " FROM "))
            conn.execute("DROP TABLE assistant_note_t")
        pg_cluster.wait_for_replay()


def test_a_missing_role_is_refused_with_the_sql_to_create_it(local_cluster: Cluster) -> None:
    register_cluster("local", [], assistant=RoleSpec(""))
    policy = AccessPolicy()

    with pytest.raises(AccessRefused) as refused:
        policy.access("local")
    message = str(refused.value)
    assert "cluster local has no assistant role" in message
    assert "GRANT pg_read_all_data TO pgwarden_assistant" in message
    assert "--assistant-user pgwarden_assistant --assistant-password-file FILE" in message
    check = policy.check_at_start("local")
    assert (check.usable, check.unsafe_role) == (False, False)

    unsafe = AccessPolicy(allow_unsafe=True).access("local")
    assert unsafe.purpose is ASSISTANT_READ_AS_OPERATIONS
    assert unsafe.warning.startswith("UNSAFE: cluster local has no assistant role")


def test_a_superuser_role_is_refused_and_another_role_registered_is_checked_anew(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    register_cluster("local", [], assistant=RoleSpec(pg_cluster.user, Secret(pg_cluster.password)))
    policy = AccessPolicy()
    check = policy.check_at_start("local")
    assert (check.usable, check.unsafe_role) == (False, True)
    assert f"role {pg_cluster.user} is a superuser" in check.message
    with pytest.raises(AccessRefused, match="is a superuser"):
        policy.access("local")

    # The registry names a least-privilege role again: the next call checks it and serves.
    register_cluster(
        "local",
        [],
        assistant=RoleSpec(pg_cluster.assistant_user, Secret(pg_cluster.assistant_password)),
    )

    def reads_as_assistant() -> bool:
        try:
            return policy.access("local").purpose is ASSISTANT_READ
        except AccessRefused:
            return False

    # This process's snapshot follows the registry within a second.
    assert poll_until(reads_as_assistant, timeout_s=5, interval_s=0.1)


def test_an_unreachable_cluster_is_checked_again_at_its_first_call(
    local_cluster: Cluster, closed_port: int
) -> None:
    local_cluster.endpoints.update(port=closed_port)
    policy = AccessPolicy()

    check = policy.check_at_start("local")

    assert check.usable
    assert "could not check its assistant role yet" in check.message
    # Not refused: the first call checks again (and says what failed, here).
    with pytest.raises(routing.NoEndpointAvailable):
        policy.access("local")


# Query slots


def test_slots_refuse_beyond_the_limit_at_once_and_free_up() -> None:
    slots = QuerySlots(2)
    both_hold = threading.Barrier(3, timeout=5)
    release = threading.Event()

    def hold() -> None:
        with slots.slot():
            both_hold.wait()
            release.wait(5)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    both_hold.wait()
    started = time.perf_counter()
    with pytest.raises(AssistantBusy, match="already runs 2 assistant queries"), slots.slot():
        pass
    assert time.perf_counter() - started < 0.05
    release.set()
    for thread in threads:
        thread.join()
    with slots.slot():
        pass


@pytest.mark.parametrize("limit", [0, -1, True, "4"])
def test_slots_need_a_positive_limit(limit: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        QuerySlots(limit)  # type: ignore[arg-type]


def test_how_to_create_names_the_write_grants() -> None:
    line = assistant.how_to_create("c", writes=True)
    assert "GRANT pg_read_all_data, pg_write_all_data TO pgwarden_assistant_write" in line
    assert "--assistant-write-password-file FILE" in line
