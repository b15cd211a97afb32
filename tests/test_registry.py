"""services.registration: idempotent registration against the real test cluster's ports."""

from __future__ import annotations

import psycopg
import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.db import transaction

from endpoints.core.crypto import Secret
from endpoints.devstack.localcluster import LocalPostgresCluster, free_port
from endpoints.models import Cluster, Endpoint, Role
from endpoints.services.registration import (
    EndpointSpec,
    register_cluster,
    register_local_cluster,
)

pytestmark = pytest.mark.django_db

NAME = "fleet"


def _specs(cluster: LocalPostgresCluster, **overrides: object) -> list[EndpointSpec]:
    """The test cluster's three nodes, as a caller that states everything would give them."""
    fields: dict[str, object] = {
        "dbname": cluster.dbname,
        "user": cluster.user,
        "password": Secret(cluster.password),
        "sslmode": "disable",
        "zone": "test",
    }
    fields.update(overrides)
    return [
        EndpointSpec(
            name=node.name,
            host=node.host,
            port=node.port,
            role=Role.PRIMARY if node.role == "primary" else Role.REPLICA,
            **fields,  # type: ignore[arg-type]
        )
        for node in cluster.nodes
    ]


def _endpoints() -> dict[str, Endpoint]:
    return {endpoint.name: endpoint for endpoint in Endpoint.objects.filter(cluster__name=NAME)}


def _with_port(specs: list[EndpointSpec], name: str, port: int) -> list[EndpointSpec]:
    return [
        EndpointSpec(**{**spec.__dict__, "port": port}) if spec.name == name else spec
        for spec in specs
    ]


def test_first_registration_creates_endpoints_that_connect(pg_cluster: LocalPostgresCluster):
    registration = register_cluster(NAME, _specs(pg_cluster), description="test fleet")

    assert registration.cluster_created
    assert registration.created == ["primary", "replica1", "replica2"]
    assert registration.updated == registration.unchanged == []
    assert "cluster 'fleet' created" in registration.summary()
    endpoints = _endpoints()
    assert {name: e.role for name, e in endpoints.items()} == {
        "primary": Role.PRIMARY,
        "replica1": Role.REPLICA,
        "replica2": Role.REPLICA,
    }
    assert Cluster.objects.get(name=NAME).description == "test fleet"
    # What was stored is enough to reach each real server, and it knows its role.
    for endpoint in endpoints.values():
        kwargs = endpoint.connection_info().connect_kwargs()
        with psycopg.connect(**kwargs) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert in_recovery == (endpoint.role == Role.REPLICA,)


def test_second_identical_registration_changes_nothing(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster), description="test fleet")
    stamps = {name: e.updated_at for name, e in _endpoints().items()}

    again = register_cluster(NAME, _specs(pg_cluster), description="test fleet")

    assert not again.changed
    assert again.unchanged == ["primary", "replica1", "replica2"]
    assert again.summary().splitlines()[0] == "cluster 'fleet' unchanged"
    assert {name: e.updated_at for name, e in _endpoints().items()} == stamps
    assert Endpoint.objects.filter(cluster__name=NAME).count() == 3


def test_a_changed_port_updates_only_that_endpoint(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))
    new_port = free_port()

    registration = register_cluster(NAME, _with_port(_specs(pg_cluster), "replica2", new_port))

    assert registration.updated == ["replica2"]
    assert registration.changes == {"replica2": ["port"]}
    assert registration.unchanged == ["primary", "replica1"]
    assert "updated: replica2 (port)" in registration.summary()
    assert _endpoints()["replica2"].port == new_port


def test_reregistering_keeps_a_promotion_weight_and_enabled(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))
    # A failover as pgwarden records it: the old primary demoted first (one enabled primary
    # at all times), replica1 promoted; an operator drained and disabled replica2.
    with transaction.atomic():
        Endpoint.objects.filter(cluster__name=NAME, name="primary").update(role=Role.REPLICA)
        Endpoint.objects.filter(cluster__name=NAME, name="replica1").update(role=Role.PRIMARY)
        Endpoint.objects.filter(cluster__name=NAME, name="replica2").update(weight=0, enabled=False)

    registration = register_cluster(NAME, _specs(pg_cluster))

    endpoints = _endpoints()
    assert endpoints["primary"].role == Role.REPLICA
    assert endpoints["replica1"].role == Role.PRIMARY
    assert (endpoints["replica2"].weight, endpoints["replica2"].enabled) == (0, False)
    assert registration.unchanged == ["primary", "replica1", "replica2"]
    assert any("primary stays replica" in note for note in registration.notes)
    assert any("replica1 stays primary" in note for note in registration.notes)


def test_reregistering_after_a_promotion_still_updates_connection_settings(
    pg_cluster: LocalPostgresCluster,
):
    register_cluster(NAME, _specs(pg_cluster))
    with transaction.atomic():
        Endpoint.objects.filter(cluster__name=NAME, name="primary").update(role=Role.REPLICA)
        Endpoint.objects.filter(cluster__name=NAME, name="replica1").update(role=Role.PRIMARY)
    new_port = free_port()

    registration = register_cluster(NAME, _with_port(_specs(pg_cluster), "replica1", new_port))

    replica1 = _endpoints()["replica1"]
    assert registration.changes == {"replica1": ["port"]}
    assert (replica1.role, replica1.port) == (Role.PRIMARY, new_port)


def test_an_invalid_endpoint_rolls_back_a_new_cluster_entirely(pg_cluster: LocalPostgresCluster):
    specs = _specs(pg_cluster)
    specs.append(EndpointSpec(name="broken", host="db.example.com", port=70000))

    with pytest.raises(ValidationError) as caught:
        register_cluster(NAME, specs)

    assert caught.value.message_dict == {
        "endpoint 'broken' port": ["Port must be between 1 and 65535."]
    }
    assert not Cluster.objects.filter(name=NAME).exists()
    assert not Endpoint.objects.exists()


def test_an_invalid_endpoint_leaves_an_existing_cluster_as_it_was(
    pg_cluster: LocalPostgresCluster,
):
    register_cluster(NAME, _specs(pg_cluster), description="before")
    before = {name: (e.port, e.updated_at) for name, e in _endpoints().items()}
    specs = _with_port(_specs(pg_cluster), "replica1", free_port())
    specs.append(EndpointSpec(name="bad name!", host="db.example.com", port=5432))

    with pytest.raises(ValidationError) as caught:
        register_cluster(NAME, specs, description="after")

    assert list(caught.value.message_dict) == ["endpoint 'bad name!' name"]
    assert {name: (e.port, e.updated_at) for name, e in _endpoints().items()} == before
    assert Cluster.objects.get(name=NAME).description == "before"


def test_an_invalid_cluster_name_writes_nothing(pg_cluster: LocalPostgresCluster):
    with pytest.raises(ValidationError) as caught:
        register_cluster("no spaces allowed", _specs(pg_cluster))

    assert list(caught.value.message_dict) == ["cluster 'no spaces allowed' name"]
    assert not Cluster.objects.exists()
    assert not Endpoint.objects.exists()


def test_repeated_names_and_two_primaries_are_refused_before_writing():
    specs = [
        EndpointSpec(name="pg1", host="db1", port=5432, role=Role.PRIMARY),
        EndpointSpec(name="pg2", host="db2", port=5432, role=Role.PRIMARY),
        EndpointSpec(name="pg2", host="db3", port=5432),
        EndpointSpec(name="pg4", host="db4", port=5432, role="leader"),
    ]

    with pytest.raises(ValidationError) as caught:
        register_cluster(NAME, specs)

    errors = caught.value.message_dict
    assert errors["endpoint 'pg2'"] == [
        "The name is given twice; endpoint names are unique within a cluster."
    ]
    assert errors["endpoints"] == [
        "2 endpoints are given as primary (pg1, pg2); a cluster has at most one."
    ]
    assert errors["endpoint 'pg4' role"] == ["'leader' is not a role; use one of primary, replica."]
    assert not Cluster.objects.exists()


def test_a_new_primary_beside_the_existing_one_is_refused(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))

    with pytest.raises(ValidationError) as caught:
        register_cluster(NAME, [EndpointSpec(name="pg9", host="db9", port=5432, role="primary")])

    assert "already has an enabled primary, 'primary'" in str(
        caught.value.message_dict["endpoint 'pg9' role"]
    )
    assert "pg9" not in _endpoints()


def test_password_is_stored_encrypted_and_a_change_is_detected(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))
    primary = _endpoints()["primary"]
    assert primary.password_encrypted
    assert pg_cluster.password not in primary.password_encrypted
    assert primary.get_password() == Secret(pg_cluster.password)

    registration = register_cluster(NAME, _specs(pg_cluster, password=Secret("a-new-password")))

    assert registration.changes == {name: ["password"] for name in _endpoints()}
    assert "a-new-password" not in registration.summary()
    assert _endpoints()["primary"].get_password() == Secret("a-new-password")


def test_a_password_left_out_is_kept_and_an_empty_one_removes_it(
    pg_cluster: LocalPostgresCluster,
):
    register_cluster(NAME, _specs(pg_cluster))

    kept = register_cluster(NAME, _specs(pg_cluster, password=None))
    assert not kept.changed
    assert _endpoints()["primary"].get_password() == Secret(pg_cluster.password)

    removed = register_cluster(NAME, _specs(pg_cluster, password=Secret("")))
    assert removed.changes["primary"] == ["password"]
    assert not _endpoints()["primary"].has_password


def test_a_password_encrypted_with_a_lost_key_is_repaired(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))
    foreign_token = Fernet(Fernet.generate_key()).encrypt(b"whatever").decode()
    Endpoint.objects.filter(cluster__name=NAME).update(password_encrypted=foreign_token)

    registration = register_cluster(NAME, _specs(pg_cluster))

    assert registration.changes["replica1"] == ["password"]
    assert _endpoints()["replica1"].get_password() == Secret(pg_cluster.password)


def test_settings_left_out_keep_what_operators_set(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))
    Endpoint.objects.filter(cluster__name=NAME, name="primary").update(
        sslmode="verify-full", sslrootcert="/etc/pgwarden/ca.pem", zone="eu-west-1a"
    )

    registration = register_cluster(
        NAME, _specs(pg_cluster, sslmode=None, zone=None, dbname=None, user=None)
    )

    primary = _endpoints()["primary"]
    assert not registration.changed
    assert (primary.sslmode, primary.sslrootcert, primary.zone) == (
        "verify-full",
        "/etc/pgwarden/ca.pem",
        "eu-west-1a",
    )


def test_new_endpoints_take_model_defaults_for_settings_left_out():
    register_cluster(NAME, [EndpointSpec(name="pg1", host="db1.example.com", port=5433)])

    pg1 = _endpoints()["pg1"]
    assert (pg1.dbname, pg1.user, pg1.sslmode, pg1.role, pg1.has_password) == (
        "postgres",
        "postgres",
        "prefer",
        Role.REPLICA,
        False,
    )


def test_endpoints_not_named_are_left_alone(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))

    registration = register_cluster(NAME, _specs(pg_cluster)[:1])

    assert registration.unchanged == ["primary"]
    assert set(_endpoints()) == {"primary", "replica1", "replica2"}


def test_a_changed_description_updates_the_cluster(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster), description="old")

    unchanged = register_cluster(NAME, _specs(pg_cluster))
    changed = register_cluster(NAME, _specs(pg_cluster), description="new")

    assert not unchanged.changed
    assert changed.cluster_changes == ["description"]
    assert changed.summary().splitlines()[0] == "cluster 'fleet' updated (description)"
    assert Cluster.objects.get(name=NAME).description == "new"


def test_health_status_survives_reregistration(pg_cluster: LocalPostgresCluster):
    register_cluster(NAME, _specs(pg_cluster))
    Endpoint.objects.filter(cluster__name=NAME, name="replica1").update(
        state="down", consecutive_failures=7
    )

    register_cluster(NAME, _with_port(_specs(pg_cluster), "replica1", free_port()))

    replica1 = _endpoints()["replica1"]
    assert (replica1.state, replica1.consecutive_failures) == ("down", 7)


def test_register_local_cluster_registers_its_nodes_once(pg_cluster: LocalPostgresCluster) -> None:
    first = register_local_cluster(pg_cluster)
    second = register_local_cluster(pg_cluster)

    cluster = first.cluster
    endpoints = {endpoint.name: endpoint for endpoint in cluster.endpoints.all()}
    assert cluster.name == "local"
    assert first.created == ["primary", "replica1", "replica2"]
    assert second.unchanged == ["primary", "replica1", "replica2"]
    assert len(endpoints) == 3
    assert {endpoint.sslmode for endpoint in endpoints.values()} == {"disable"}
    assert endpoints["primary"].role == Role.PRIMARY
    assert {endpoints["replica1"].role, endpoints["replica2"].role} == {Role.REPLICA}
    for node in pg_cluster.nodes:
        assert (endpoints[node.name].host, endpoints[node.name].port) == (node.host, node.port)
        assert endpoints[node.name].get_password().reveal() == pg_cluster.password
        assert pg_cluster.password not in endpoints[node.name].password_encrypted
