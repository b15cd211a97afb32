"""endpoints.models: field validation, the one-enabled-primary rule, and masked credentials."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from endpoints.models import Cluster, Endpoint, Role, SslMode, validate_host

pytestmark = pytest.mark.django_db

PASSWORD = "model-test-password-7Hq2"


@pytest.fixture
def cluster() -> Cluster:
    return Cluster.objects.create(name="alpha")


@pytest.fixture
def primary(cluster: Cluster) -> Endpoint:
    endpoint = Endpoint(cluster=cluster, name="pg1", host="10.0.0.1", role=Role.PRIMARY)
    endpoint.set_password(PASSWORD)
    endpoint.full_clean()
    endpoint.save()
    return endpoint


def endpoint_errors(cluster: Cluster, **fields: Any) -> dict[str, list[str]]:
    """The field errors ``full_clean`` reports for a new endpoint with ``fields``."""
    values: dict[str, Any] = {"cluster": cluster, "name": "candidate", "host": "10.0.0.9"}
    values.update(fields)
    try:
        Endpoint(**values).full_clean()
    except ValidationError as exc:
        return exc.message_dict
    return {}


def cluster_errors(**fields: Any) -> dict[str, list[str]]:
    try:
        Cluster(name="candidate", **fields).full_clean()
    except ValidationError as exc:
        return exc.message_dict
    return {}


def test_a_valid_endpoint_passes_full_clean(cluster: Cluster) -> None:
    assert endpoint_errors(cluster) == {}
    assert cluster_errors() == {}


@pytest.mark.parametrize("port", [0, 65536])
def test_port_outside_1_to_65535_is_rejected(cluster: Cluster, port: int) -> None:
    errors = endpoint_errors(cluster, port=port)

    assert errors["port"] == ["Port must be between 1 and 65535."]


@pytest.mark.parametrize("port", [1, 5432, 65535])
def test_port_inside_the_range_is_accepted(cluster: Cluster, port: int) -> None:
    assert "port" not in endpoint_errors(cluster, port=port)


def test_weight_cannot_be_negative_but_zero_drains(cluster: Cluster) -> None:
    assert "weight" in endpoint_errors(cluster, weight=-1)
    assert endpoint_errors(cluster, weight=0) == {}


def test_pool_min_size_above_max_is_an_error_on_pool_min_size(cluster: Cluster) -> None:
    errors = endpoint_errors(cluster, pool_min_size=11, pool_max_size=10)

    assert list(errors) == ["pool_min_size"]
    assert errors["pool_min_size"] == ["Pool min size (11) cannot exceed pool max size (10)."]
    assert endpoint_errors(cluster, pool_min_size=10, pool_max_size=10) == {}


@pytest.mark.parametrize(
    ("field", "label"),
    [("pool_timeout_s", "Pool timeout"), ("pool_max_idle_s", "Pool max idle")],
)
@pytest.mark.parametrize("value", [0, -1])
def test_endpoint_timeouts_must_be_positive(
    cluster: Cluster, field: str, label: str, value: float
) -> None:
    errors = endpoint_errors(cluster, **{field: value})

    assert errors[field] == [f"{label} must be greater than 0."]


@pytest.mark.parametrize(
    ("field", "label"),
    [
        ("connect_timeout_s", "Connect timeout"),
        ("probe_timeout_s", "Probe timeout"),
        ("statement_timeout_ms", "Statement timeout"),
        ("check_interval_s", "Check interval"),
    ],
)
def test_cluster_timeouts_must_be_positive(field: str, label: str) -> None:
    errors = cluster_errors(**{field: 0})

    assert errors[field] == [f"{label} must be greater than 0."]
    assert field not in cluster_errors(**{field: 1})


def test_a_small_but_positive_timeout_is_accepted(cluster: Cluster) -> None:
    assert endpoint_errors(cluster, pool_timeout_s=0.0005) == {}
    assert cluster_errors(probe_timeout_s=0.0005) == {}


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("cluster", "probe_timeout_s"),
        ("cluster", "connect_timeout_s"),
        ("cluster", "failure_threshold"),
        ("endpoint", "pool_timeout_s"),
        ("endpoint", "pool_max_lifetime_s"),
        ("endpoint", "pool_max_size"),
    ],
)
def test_a_zero_timeout_written_around_the_forms_is_refused_by_the_database(
    primary: Endpoint, model: str, field: str
) -> None:
    queryset = (
        Cluster.objects.filter(pk=primary.cluster_id)
        if model == "cluster"
        else Endpoint.objects.filter(pk=primary.pk)
    )
    updates: dict[str, Any] = {field: 0}
    if field == "pool_max_size":
        updates["pool_min_size"] = 0

    with pytest.raises(IntegrityError), transaction.atomic():
        queryset.update(**updates)


def test_verify_full_requires_a_root_certificate(cluster: Cluster) -> None:
    errors = endpoint_errors(cluster, sslmode=SslMode.VERIFY_FULL)

    assert list(errors) == ["sslrootcert"]
    assert "root certificate" in errors["sslrootcert"][0]
    assert (
        endpoint_errors(cluster, sslmode=SslMode.VERIFY_FULL, sslrootcert="/etc/pg/root.crt") == {}
    )
    assert "sslrootcert" in endpoint_errors(cluster, sslmode=SslMode.VERIFY_CA)


def test_retry_max_delay_below_initial_is_an_error_on_max_delay() -> None:
    errors = cluster_errors(retry_initial_delay_ms=500, retry_max_delay_ms=100)

    assert errors["retry_max_delay_ms"] == ["The max delay must be at least the initial delay."]
    assert cluster_errors(retry_initial_delay_ms=500, retry_max_delay_ms=500) == {}


def test_retry_max_delay_below_initial_is_refused_by_the_database() -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Cluster.objects.create(name="bad", retry_initial_delay_ms=500, retry_max_delay_ms=100)


# The one-enabled-primary rule


def test_second_enabled_primary_is_an_error_on_role_naming_the_first(
    cluster: Cluster, primary: Endpoint
) -> None:
    errors = endpoint_errors(cluster, name="pg2", role=Role.PRIMARY)

    assert "role" in errors
    assert "'pg1'" in errors["role"][0]
    assert "'alpha'" in errors["role"][0]


def test_an_existing_primary_does_not_conflict_with_itself(primary: Endpoint) -> None:
    primary.weight = 50
    primary.full_clean()


@pytest.mark.parametrize("method", ["create", "bulk_create", "update"])
def test_database_refuses_a_second_enabled_primary_bypassing_forms(
    cluster: Cluster, primary: Endpoint, method: str
) -> None:
    second = {"cluster": cluster, "name": "pg2", "host": "10.0.0.2", "role": Role.PRIMARY}
    replica = Endpoint.objects.create(cluster=cluster, name="pg3", host="10.0.0.3")
    writes = {
        "create": lambda: Endpoint.objects.create(**second),
        "bulk_create": lambda: Endpoint.objects.bulk_create([Endpoint(**second)]),
        "update": lambda: Endpoint.objects.filter(pk=replica.pk).update(role=Role.PRIMARY),
    }

    with pytest.raises(IntegrityError), transaction.atomic():
        writes[method]()

    assert list(Endpoint.objects.filter(role=Role.PRIMARY)) == [primary]


def test_a_disabled_second_primary_is_allowed(cluster: Cluster, primary: Endpoint) -> None:
    assert endpoint_errors(cluster, name="pg2", role=Role.PRIMARY, enabled=False) == {}
    Endpoint.objects.create(
        cluster=cluster, name="pg2", host="10.0.0.2", role=Role.PRIMARY, enabled=False
    )

    assert Endpoint.objects.filter(cluster=cluster, role=Role.PRIMARY).count() == 2


def test_a_primary_in_another_cluster_is_allowed(primary: Endpoint) -> None:
    other = Cluster.objects.create(name="beta")

    assert endpoint_errors(other, name="pg1", role=Role.PRIMARY) == {}
    Endpoint.objects.create(cluster=other, name="pg1", host="10.0.1.1", role=Role.PRIMARY)

    assert Endpoint.objects.filter(role=Role.PRIMARY, enabled=True).count() == 2


def test_endpoint_names_are_unique_within_a_cluster(cluster: Cluster, primary: Endpoint) -> None:
    errors = endpoint_errors(cluster, name="pg1")

    assert errors["__all__"] == ["This cluster already has an endpoint with this name."]


# Credentials


def test_password_is_stored_encrypted_and_read_back(primary: Endpoint) -> None:
    stored = Endpoint.objects.get(pk=primary.pk)

    assert stored.has_password
    assert PASSWORD not in stored.password_encrypted
    assert stored.get_password().reveal() == PASSWORD


def test_set_password_with_an_empty_string_removes_it(primary: Endpoint) -> None:
    primary.set_password("")

    assert not primary.has_password
    assert primary.password_encrypted == ""
    assert primary.get_password().reveal() == ""


def test_str_and_repr_never_contain_the_password(primary: Endpoint) -> None:
    for text in (str(primary), repr(primary)):
        assert PASSWORD not in text
        assert primary.password_encrypted not in text
    assert str(primary) == "alpha/pg1"
    assert "10.0.0.1:5432" in repr(primary)


def test_connection_info_masks_the_password_but_connects_with_it(primary: Endpoint) -> None:
    info = primary.connection_info()

    assert info.connect_kwargs()["password"] == PASSWORD
    for text in (str(info), repr(info), info.masked(), repr(info.password)):
        assert PASSWORD not in text
    assert info.masked() == ("postgresql://postgres:********@10.0.0.1:5432/postgres?sslmode=prefer")
    assert info.connect_timeout_s == primary.cluster.connect_timeout_s
    assert info.statement_timeout_ms == primary.cluster.statement_timeout_ms


def test_masked_dsn_shows_everything_but_the_password(primary: Endpoint) -> None:
    dsn = primary.masked_dsn()

    assert PASSWORD not in dsn
    assert dsn == "postgresql://postgres:********@10.0.0.1:5432/postgres?sslmode=prefer"
    primary.set_password("")
    assert primary.masked_dsn() == "postgresql://postgres@10.0.0.1:5432/postgres?sslmode=prefer"


@pytest.mark.parametrize(
    "host", ["db1", "db1.internal", "db_1.example.com.", "10.0.0.1", "::1", "fd00::2", "localhost"]
)
def test_a_host_is_one_name_or_address(host: str) -> None:
    validate_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        " db1",
        "/var/run/postgresql",  # libpq reads a leading / as a Unix-socket directory
        "@/tmp",
        "db1,db2",  # libpq tries each host of a list
        "db1 db2",
        "host=evil",
        "[::1]",
        "-db1",
        "a..b",
        "x" * 64 + ".example.com",
    ],
)
def test_anything_libpq_would_read_as_more_than_one_host_is_refused(host: str) -> None:
    with pytest.raises(ValidationError):
        validate_host(host)


def test_an_endpoint_moved_to_another_address_loses_its_streaming_observation(db: Any) -> None:
    from django.utils import timezone

    cluster = Cluster.objects.create(name="moves")
    primary = Endpoint.objects.create(cluster=cluster, name="p", host="10.0.0.1", role=Role.PRIMARY)
    replica = Endpoint.objects.create(cluster=cluster, name="r", host="10.0.0.2")
    Endpoint.objects.filter(pk=replica.pk).update(
        upstream=primary, upstream_observed_at=timezone.now()
    )

    replica.refresh_from_db()
    replica.weight = 5
    replica.save()  # not moved: the observation stays
    replica.refresh_from_db()
    assert replica.upstream == primary

    replica.host = "10.6.6.6"
    replica.save(update_fields=["host"])
    replica.refresh_from_db()
    assert (replica.upstream, replica.upstream_observed_at) == (None, None)


# One vocabulary: the models' choices are the core StrEnums, labels as before


def test_role_and_state_are_the_vocabulary_enums() -> None:
    from endpoints.core import vocabulary
    from endpoints.models import Alert, FailoverEvent, State

    assert Role is vocabulary.Role
    assert State is vocabulary.State
    assert SslMode is vocabulary.SslMode
    assert FailoverEvent.Kind is vocabulary.FailoverKind
    assert FailoverEvent.Outcome is vocabulary.FailoverOutcome
    assert Alert.Kind is vocabulary.AlertKind
    assert Alert.Severity is vocabulary.AlertSeverity


def test_field_choices_list_every_vocabulary_value_with_its_label() -> None:
    from endpoints.models import Alert, FailoverEvent

    def choices_of(model: Any, field: str) -> list[tuple[str, str]]:
        return list(model._meta.get_field(field).choices)

    # A role is labelled as a role, not as the read preference of the same spelling.
    assert choices_of(Endpoint, "role") == [("primary", "primary"), ("replica", "replica")]
    assert choices_of(Cluster, "read_preference")[0] == (
        "primary",
        "primary (reads on the primary only)",
    )
    assert ("in_progress", "in progress") in choices_of(FailoverEvent, "outcome")
    assert ("replica_lag", "replica lag over bound") in choices_of(Alert, "kind")
    assert [value for value, _ in choices_of(Endpoint, "sslmode")] == [m.value for m in SslMode]


def test_get_display_reads_the_vocabulary_label(primary: Endpoint) -> None:
    primary.state = "healthy"

    assert primary.get_role_display() == "primary"
    assert primary.get_state_display() == "healthy"
    assert primary.cluster.get_load_balancing_display() == "weighted round robin"
