"""endpoints.core.purposes and the views derived from it: each purpose's role and session limits."""

from __future__ import annotations

import psycopg
import pytest

from endpoints.core.conninfo import ConnectionInfo
from endpoints.core.crypto import Secret
from endpoints.core.purposes import (
    ASSISTANT_READ,
    ASSISTANT_READ_AS_OPERATIONS,
    ASSISTANT_WRITE,
    OPERATIONS,
    AssistantLimits,
    assistant_purpose,
    assistant_role_sql,
    session_settings,
)
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.routing import topology
from endpoints.services.registration import RoleSpec, register_cluster

LIMITS = AssistantLimits(max_timeout_ms=45_000, lock_timeout_ms=700)


def test_operations_sessions_carry_nothing_extra() -> None:
    assert session_settings(OPERATIONS, LIMITS) == ()


def test_assistant_sessions_start_with_the_limits_and_reads_read_only() -> None:
    reads = dict(session_settings(ASSISTANT_READ, LIMITS))
    writes = dict(session_settings(ASSISTANT_WRITE, LIMITS))

    for settings in (reads, writes):
        assert settings["standard_conforming_strings"] == "on"
        assert settings["client_encoding"] == "UTF8"
        assert settings["statement_timeout"] == "45000ms"
        assert settings["lock_timeout"] == "700ms"
        assert settings["idle_in_transaction_session_timeout"] == "45000ms"
    assert reads["default_transaction_read_only"] == "on"
    assert "default_transaction_read_only" not in writes


@pytest.mark.parametrize("value", [0, -1, True, "60000", None])
def test_limits_must_be_positive_milliseconds(value: object) -> None:
    with pytest.raises(ValueError, match="positive number of milliseconds"):
        AssistantLimits(max_timeout_ms=value)  # type: ignore[arg-type]


def test_assistant_purpose_picks_the_role_source() -> None:
    assert assistant_purpose(writes=False) is ASSISTANT_READ
    assert assistant_purpose(writes=True) is ASSISTANT_WRITE
    assert assistant_purpose(writes=False, operations_role=True) is ASSISTANT_READ_AS_OPERATIONS


def test_role_sql_grants_only_what_the_purpose_needs() -> None:
    reads = assistant_role_sql("helper", "'pw'", writes=False)
    writes = assistant_role_sql("writer", ":'pw'", writes=True, exists=True)

    assert reads[0].startswith('CREATE ROLE "helper" WITH LOGIN NOSUPERUSER NOCREATEROLE')
    assert reads[0].endswith("PASSWORD 'pw'")
    assert reads[1] == 'GRANT pg_read_all_data TO "helper"'
    assert """ALTER ROLE "helper" SET default_transaction_read_only = 'on'""" in reads
    assert writes[0].startswith('ALTER ROLE "writer" WITH LOGIN NOSUPERUSER')
    assert writes[1] == 'GRANT pg_read_all_data, pg_write_all_data TO "writer"'
    assert not any("default_transaction_read_only" in statement for statement in writes)
    assert assistant_role_sql('a"b', "'x'", writes=False)[1] == 'GRANT pg_read_all_data TO "a""b"'


def test_connection_options_escape_spaces_and_backslashes() -> None:
    info = ConnectionInfo(
        host="h",
        port=1,
        dbname="d",
        user="u",
        statement_timeout_ms=5000,
        settings=(("application_name", "a b\\c"), ("lock_timeout", "1s")),
    )
    assert info.connect_kwargs()["options"] == (
        "-c statement_timeout=5000 -c application_name=a\\ b\\\\c -c lock_timeout=1s"
    )
    # The purpose's own statement_timeout replaces the cluster's.
    replaced = ConnectionInfo(
        host="h",
        port=1,
        dbname="d",
        user="u",
        statement_timeout_ms=5000,
        settings=(("statement_timeout", "60000ms"),),
    )
    assert replaced.connect_kwargs()["options"] == "-c statement_timeout=60000ms"


@pytest.mark.django_db
def test_an_assistant_view_connects_as_the_clusters_role_by_scram_with_its_settings(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    snapshot = topology.load_snapshot(None)

    derived = topology.for_purpose(snapshot, ASSISTANT_READ, LIMITS).cluster("local")
    assert derived is not None
    assert derived.purpose is ASSISTANT_READ
    for endpoint in derived.endpoints:
        info = endpoint.connection
        assert info is not None
        assert info.user == pg_cluster.assistant_user
        assert info.password.reveal() == pg_cluster.assistant_password
        assert info.require_auth == "scram-sha-256"
        assert info.application_name == "pgwarden-assistant"
        assert dict(info.settings)["default_transaction_read_only"] == "on"
        assert (info.host, info.port) == ("127.0.0.1", pg_cluster.node(endpoint.name).port)
        with psycopg.connect(**info.connect_kwargs()) as conn:
            assert conn.execute(
                "SELECT current_user, current_setting('lock_timeout')"
            ).fetchone() == (
                pg_cluster.assistant_user,
                "700ms",
            )
    assert topology.for_purpose(snapshot, OPERATIONS, LIMITS) is snapshot


@pytest.mark.django_db
def test_a_cluster_without_the_role_has_no_usable_endpoint_for_that_purpose(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    register_cluster("local", [], assistant_write=RoleSpec(""))
    snapshot = topology.load_snapshot(None)

    writes = topology.for_purpose(snapshot, ASSISTANT_WRITE, LIMITS).cluster("local")
    assert writes is not None
    assert writes.candidates == ()
    assert set(writes.unusable.values()) == {
        "cluster 'local' has no assistant write role registered"
    }
    # The explicit unsafe choice connects with the endpoints' own (operations) role.
    unsafe = topology.for_purpose(snapshot, ASSISTANT_READ_AS_OPERATIONS, LIMITS).cluster("local")
    assert unsafe is not None
    assert {endpoint.connection.user for endpoint in unsafe.endpoints} == {pg_cluster.user}  # type: ignore[union-attr]


@pytest.mark.django_db
def test_an_undecryptable_role_password_says_what_to_do(local_cluster: Cluster) -> None:
    Cluster.objects.filter(pk=local_cluster.pk).update(assistant_password_encrypted="garbage")
    snapshot = topology.load_snapshot(None)

    reads = topology.for_purpose(snapshot, ASSISTANT_READ, LIMITS).cluster("local")

    assert reads is not None
    assert all("cannot be decrypted" in why for why in reads.unusable.values())
    assert "garbage" not in repr(reads)
    assert str(Secret("x")) == "Secret('********')"
