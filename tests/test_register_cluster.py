"""``manage.py register_cluster`` against the real test cluster: as scripts and compose run it."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from endpoints.core.crypto import Secret
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.management.commands.register_cluster import EndpointArg, parse_endpoint
from endpoints.models import Cluster, Endpoint, Role
from tests.helpers import ROOT
from tests.helpers.processes import run_manage


def _endpoint_args(cluster: LocalPostgresCluster) -> list[str]:
    args: list[str] = []
    for node in cluster.nodes:
        args += ["--endpoint", f"{node.name}={node.role}@{node.host}:{node.port}"]
    return args


def _common_args(cluster: LocalPostgresCluster) -> list[str]:
    return [
        "fleet",
        *_endpoint_args(cluster),
        "--dbname",
        cluster.dbname,
        "--user",
        cluster.user,
        "--sslmode",
        "disable",
    ]


@pytest.fixture
def child_env(transactional_db: None) -> dict[str, str]:
    """The environment for a manage.py child writing to this test's database.

    Its DATABASE_URL already names the test database (tests/settings.py); the database must
    be transactional so that the two processes see each other's committed rows.
    """
    assert os.environ["DATABASE_URL"].endswith(settings.DATABASES["default"]["NAME"])
    return dict(os.environ)


@pytest.fixture
def password_file(tmp_path: Path, pg_cluster: LocalPostgresCluster) -> Path:
    path = tmp_path / "managed-pg-password"
    # A trailing newline, as `echo` and editors leave it: not part of the password.
    path.write_text(pg_cluster.password + "\n")
    path.chmod(0o600)
    return path


def _assert_registered_and_reachable(cluster: LocalPostgresCluster) -> None:
    endpoints = {e.name: e for e in Endpoint.objects.filter(cluster__name="fleet")}
    assert {name: e.role for name, e in endpoints.items()} == {
        "primary": Role.PRIMARY,
        "replica1": Role.REPLICA,
        "replica2": Role.REPLICA,
    }
    for endpoint in endpoints.values():
        assert cluster.password not in endpoint.password_encrypted
        assert endpoint.get_password() == Secret(cluster.password)
        with psycopg.connect(**endpoint.connection_info().connect_kwargs()) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert in_recovery == (endpoint.role == Role.REPLICA,)


def test_password_file_registers_then_second_run_is_unchanged(
    pg_cluster: LocalPostgresCluster, child_env: dict[str, str], password_file: Path
) -> None:
    args = [*_common_args(pg_cluster), "--password-file", str(password_file)]

    first = run_manage("register_cluster", *args, "--description", "from a script", env=child_env)
    second = run_manage("register_cluster", *args, env=child_env)

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "cluster 'fleet' created",
        "  created: primary, replica1, replica2",
    ]
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "cluster 'fleet' unchanged",
        "  unchanged: primary, replica1, replica2",
    ]
    for result in (first, second):
        assert pg_cluster.password not in result.stdout + result.stderr
    assert Cluster.objects.get(name="fleet").description == "from a script"
    _assert_registered_and_reachable(pg_cluster)


def test_password_on_stdin_registers(
    pg_cluster: LocalPostgresCluster, child_env: dict[str, str]
) -> None:
    # run_manage has no stdin; this is the same child process, fed through a real pipe.
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "register_cluster",
            *_common_args(pg_cluster),
            "--password-stdin",
        ],
        cwd=ROOT,
        env=child_env,
        input=pg_cluster.password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "created: primary, replica1, replica2" in result.stdout
    assert pg_cluster.password not in result.stdout + result.stderr
    _assert_registered_and_reachable(pg_cluster)


@pytest.mark.django_db
def test_changed_password_on_stdin_is_reported_without_showing_it(
    pg_cluster: LocalPostgresCluster, password_file: Path
) -> None:
    call_command(
        "register_cluster",
        *_common_args(pg_cluster),
        "--password-file",
        password_file,
        stdout=StringIO(),
    )
    out = StringIO()

    call_command(
        "register_cluster",
        *_common_args(pg_cluster),
        "--password-stdin",
        stdin=StringIO("another-secret-pw\n"),
        stdout=out,
    )

    assert "updated: primary (password), replica1 (password), replica2 (password)" in (
        out.getvalue()
    )
    assert "another-secret-pw" not in out.getvalue()
    primary = Endpoint.objects.get(cluster__name="fleet", name="primary")
    assert primary.get_password() == Secret("another-secret-pw")


@pytest.mark.django_db
def test_without_password_options_the_stored_password_is_kept(
    pg_cluster: LocalPostgresCluster, password_file: Path
) -> None:
    call_command(
        "register_cluster",
        *_common_args(pg_cluster),
        "--password-file",
        password_file,
        stdout=StringIO(),
    )
    out = StringIO()

    call_command("register_cluster", *_common_args(pg_cluster), stdout=out)

    assert out.getvalue().startswith("cluster 'fleet' unchanged")
    _assert_registered_and_reachable(pg_cluster)


def _command_error(*args: object) -> str:
    with pytest.raises(CommandError) as caught:
        call_command("register_cluster", *args, stdout=StringIO())
    assert not Cluster.objects.exists()
    return str(caught.value)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("pg1=leader@db1:5432", "endpoint 'pg1': role 'leader' is not one of primary, replica"),
        ("pg1=primary@db1:0", "endpoint 'pg1': port 0 is not between 1 and 65535"),
        ("pg1=primary@db1:70000", "endpoint 'pg1': port 70000 is not between 1 and 65535"),
        ("pg1=primary@db1:abc", "endpoint 'pg1': port 'abc' is not a number"),
        ("pg1=primary@db1:", "endpoint 'pg1': port '' is not a number"),
        ("pg1=primary@", "endpoint 'pg1': '' is not a host name or IP address"),
        ("pg1=primary@bad host", "endpoint 'pg1': 'bad host' is not a host name or IP address"),
        ("pg1=primary@::1", "endpoint 'pg1': write an IPv6 address in brackets"),
        ("pg1=primary@[db1]:5432", "endpoint 'pg1': 'db1' in brackets is not an IPv6 address"),
        ("pg 1=primary@db1", "endpoint name 'pg 1' must be 1-63 letters, digits"),
        ("primary@db1:5432", "'primary@db1:5432' is not NAME=ROLE@HOST[:PORT]"),
    ],
)
def test_malformed_endpoints_are_refused(endpoint: str, message: str) -> None:
    error = _command_error("fleet", "--endpoint", endpoint)

    assert error.startswith("Error: argument --endpoint: ")
    assert message in error


def test_endpoint_syntax_accepts_names_ipv6_and_a_default_port() -> None:
    assert parse_endpoint("pg-replica1=replica@pg-replica1:5433") == EndpointArg(
        "pg-replica1", "replica", "pg-replica1", 5433
    )
    assert parse_endpoint("a_1=primary@[fd00::2]:6432") == EndpointArg(
        "a_1", "primary", "fd00::2", 6432
    )
    assert parse_endpoint("b=replica@10.0.0.7") == EndpointArg("b", "replica", "10.0.0.7", 5432)


@pytest.mark.django_db
def test_repeated_endpoint_names_are_refused() -> None:
    error = _command_error(
        "fleet", "--endpoint", "pg1=primary@db1", "--endpoint", "pg1=replica@db2"
    )

    assert error == "Error: argument --endpoint: endpoint 'pg1' is given twice"


@pytest.mark.django_db
def test_two_primaries_are_refused() -> None:
    error = _command_error(
        "fleet", "--endpoint", "pg1=primary@db1", "--endpoint", "pg2=primary@db2"
    )

    assert error == (
        "Error: argument --endpoint: both 'pg1' and 'pg2' are given as primary; a cluster has one"
    )


@pytest.mark.django_db
def test_unreadable_password_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    endpoint = ["--endpoint", "pg1=primary@db1"]

    assert _command_error("fleet", *endpoint, "--password-file", missing) == (
        f"cannot read the password file {missing}: No such file or directory"
    )
    assert _command_error("fleet", *endpoint, "--password-file", tmp_path) == (
        f"cannot read the password file {tmp_path}: Is a directory"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"first-line\nsecond-line\n", "spans several lines; give the password alone"),
        (b"\xff\xfe-not-utf8", "is not UTF-8 text"),
    ],
)
def test_bad_password_files_are_refused_without_echoing_them(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "password"
    path.write_bytes(content)

    error = _command_error("fleet", "--endpoint", "pg1=primary@db1", "--password-file", path)

    assert error == f"the password file {path} {message}"
    for word in content.decode(errors="replace").split():
        assert word not in error


@pytest.mark.django_db
def test_password_file_and_stdin_are_exclusive(tmp_path: Path) -> None:
    error = _command_error(
        "fleet", "--endpoint", "pg1=primary@db1", "--password-file", tmp_path, "--password-stdin"
    )

    assert "not allowed with argument --password-file" in error


@pytest.mark.processes
def test_a_password_on_the_command_line_is_refused_and_not_echoed() -> None:
    result = run_manage(
        "register_cluster", "fleet", "--endpoint", "pg1=primary@db1", "--password=hunter2-on-argv"
    )

    assert result.returncode == 2
    assert "argument --password: passwords are not taken on the command line" in result.stderr
    assert "hunter2-on-argv" not in result.stdout + result.stderr


@pytest.mark.django_db
def test_model_validation_errors_are_shown_per_field() -> None:
    error = _command_error("bad name", "--endpoint", "pg1=primary@db1", "--sslmode", "verify-full")

    assert error.splitlines() == [
        "cluster 'bad name' was not registered (nothing was changed):",
        "  cluster 'bad name' name: Enter a valid “slug” consisting of letters, numbers, "
        "underscores or hyphens.",
        "  endpoint 'pg1' sslrootcert: sslmode verify-full verifies the server certificate: "
        "give the path of the root certificate.",
    ]


@pytest.mark.processes
def test_errors_reach_the_operator_from_the_command_line(
    child_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_manage(
        "register_cluster",
        "fleet",
        "--endpoint",
        "pg1=primary@db1",
        "--password-file",
        str(tmp_path / "absent"),
        env=child_env,
    )

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"CommandError: cannot read the password file {tmp_path / 'absent'}: "
        "No such file or directory"
    )
    assert not Cluster.objects.exists()


# The MCP server's roles


def test_assistant_roles_are_registered_from_files_and_connect_then_second_run_is_unchanged(
    pg_cluster: LocalPostgresCluster, child_env: dict[str, str], tmp_path: Path
) -> None:
    files = {}
    for name, secret in (
        ("reader", pg_cluster.assistant_password),
        ("writer", pg_cluster.assistant_write_password),
    ):
        files[name] = tmp_path / name
        files[name].write_text(secret + "\n")
    args = [
        *_common_args(pg_cluster),
        "--assistant-user",
        pg_cluster.assistant_user,
        "--assistant-password-file",
        str(files["reader"]),
        "--assistant-write-user",
        pg_cluster.assistant_write_user,
        "--assistant-write-password-file",
        str(files["writer"]),
    ]

    first = run_manage("register_cluster", *args, env=child_env)

    assert first.returncode == 0, first.stderr
    for secret in (pg_cluster.assistant_password, pg_cluster.assistant_write_password):
        assert secret not in first.stdout + first.stderr
    cluster = Cluster.objects.get(name="fleet")
    reader, writer = cluster.assistant_role(), cluster.assistant_role(writes=True)
    assert reader is not None
    assert writer is not None
    assert (reader.user, writer.user) == (
        pg_cluster.assistant_user,
        pg_cluster.assistant_write_user,
    )
    assert pg_cluster.assistant_password not in reader.password_encrypted
    with psycopg.connect(
        **pg_cluster.conninfo("primary", user=reader.user, password=reader.password().reveal())
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (reader.user,)

    again = run_manage("register_cluster", *args, env=child_env)
    assert again.returncode == 0, again.stderr
    assert "cluster 'fleet' unchanged" in again.stdout

    removed = run_manage(
        "register_cluster", *_common_args(pg_cluster), "--assistant-user", "", env=child_env
    )
    assert removed.returncode == 0, removed.stderr
    assert "assistant role" in removed.stdout
    stored = Cluster.objects.get(name="fleet")
    assert stored.assistant_role() is None
    assert stored.assistant_password_encrypted == ""
    assert stored.assistant_role(writes=True) is not None  # left as it was


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--assistant-password-file", "/nonexistent"], "needs --assistant-user"),
        (["--assistant-user", "bad name"], "is not a role name"),
        (
            ["--assistant-user", "r", "--assistant-password-file", "/nonexistent/file"],
            "cannot read the --assistant-password-file",
        ),
    ],
)
def test_assistant_role_options_refuse_bad_input_and_change_nothing(
    pg_cluster: LocalPostgresCluster, child_env: dict[str, str], extra: list[str], message: str
) -> None:
    refused = run_manage("register_cluster", *_common_args(pg_cluster), *extra, env=child_env)

    assert refused.returncode != 0
    assert message in refused.stderr
    assert not Cluster.objects.filter(name="fleet").exists()
