"""project.env: every setting from the environment, and errors that name the variable.

The ``manage.py`` runs get a controlled environment: none of the test run's variables,
``PGWARDEN_ENV_FILE`` blank so no developer's ``.env`` fills the gaps, and the
control database in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from project import env
from project.env import (
    BASE_DIR,
    VARIABLES,
    InvalidValue,
    int_between,
    parse_bool,
    parse_database_url,
    parse_encryption_keys,
    parse_env_file,
    parse_origins,
    parse_positive_int,
    parse_redis_url,
    parse_time_zone,
)
from tests.helpers.processes import run_manage

VALID_SECRET_KEY = "a-valid-secret-key-for-the-env-tests-0123456789"
VALID_KEY = Fernet.generate_key().decode()
DB_PASSWORD = "db-password-Kx81"
REDIS_PASSWORD = "redis-password-Qm27"


def manage_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """A valid production environment (no .env), with ``overrides``; None removes one."""
    values = {
        name: value
        for name, value in os.environ.items()
        if name not in VARIABLES and name != "PGWARDEN_TEST_ENV_OWNER"
    }
    values.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "PGWARDEN_ENV_FILE": "",
            "SECRET_KEY": VALID_SECRET_KEY,
            "PGWARDEN_ENCRYPTION_KEYS": VALID_KEY,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'control.sqlite3'}",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        }
    )
    for name, value in overrides.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def check(tmp_path: Path, **overrides: str | None) -> subprocess.CompletedProcess[str]:
    return run_manage("check", env=manage_env(tmp_path, **overrides))


def configuration_error(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The one-line error of a failed start-up, checked to name ``name`` with an example."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith(f"pgwarden: configuration error: {name} ")
    assert f"Example: {name}=" in line
    assert "Traceback" not in result.stderr
    return line


# manage.py check


@pytest.mark.processes
def test_a_valid_environment_passes_check(tmp_path: Path) -> None:
    result = check(tmp_path)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.processes
def test_missing_secret_key_is_named(tmp_path: Path) -> None:
    line = configuration_error(check(tmp_path, SECRET_KEY=None), "SECRET_KEY")

    assert "SECRET_KEY is not set" in line


@pytest.mark.processes
def test_short_secret_key_is_named_and_not_echoed(tmp_path: Path) -> None:
    line = configuration_error(check(tmp_path, SECRET_KEY="short-secret-k3y"), "SECRET_KEY")

    assert "shorter than 32 characters" in line
    assert "short-secret-k3y" not in line


@pytest.mark.processes
def test_malformed_debug_is_named_and_quoted(tmp_path: Path) -> None:
    line = configuration_error(check(tmp_path, DEBUG="maybe"), "DEBUG")

    assert "'maybe' is not a boolean" in line


@pytest.mark.processes
def test_database_url_with_a_bad_scheme_is_named_without_the_url(tmp_path: Path) -> None:
    url = f"mysql://pgwarden:{DB_PASSWORD}@db.example.com:3306/pgwarden"

    line = configuration_error(check(tmp_path, DATABASE_URL=url), "DATABASE_URL")

    assert "scheme 'mysql'" in line
    assert DB_PASSWORD not in line
    assert "db.example.com" not in line


@pytest.mark.parametrize(
    "url",
    [
        # An unencoded "/" ends the host part early: urllib then reads the password as a port.
        f"postgres://pgwarden:{DB_PASSWORD}/x@127.0.0.1:5432/pgwarden",
        f"postgres://pgwarden:{DB_PASSWORD}?x@127.0.0.1:5432/pgwarden",
        # "[" makes urllib raise "Invalid IPv6 URL".
        f"postgres://pgwarden:{DB_PASSWORD}[x@127.0.0.1:5432/pgwarden",
    ],
)
@pytest.mark.processes
def test_unparsable_database_url_is_named_without_the_password(tmp_path: Path, url: str) -> None:
    line = configuration_error(check(tmp_path, DATABASE_URL=url), "DATABASE_URL")

    assert DB_PASSWORD not in line
    assert "percent-encode" in line


@pytest.mark.processes
def test_malformed_redis_url_is_named_without_the_url(tmp_path: Path) -> None:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:not-a-port/0"

    line = configuration_error(check(tmp_path, REDIS_URL=url), "REDIS_URL")

    assert REDIS_PASSWORD not in line
    assert "not-a-port" not in line


@pytest.mark.processes
def test_bad_encryption_key_is_named_without_the_key(tmp_path: Path) -> None:
    bad_key = "not-a-fernet-key-Wd55"

    line = configuration_error(
        check(tmp_path, PGWARDEN_ENCRYPTION_KEYS=f"{VALID_KEY},{bad_key}"),
        "PGWARDEN_ENCRYPTION_KEYS",
    )

    assert "key #2 is not a valid Fernet key" in line
    assert bad_key not in line
    assert VALID_KEY not in line


@pytest.mark.processes
def test_missing_encryption_keys_are_named(tmp_path: Path) -> None:
    line = configuration_error(
        check(tmp_path, PGWARDEN_ENCRYPTION_KEYS=None), "PGWARDEN_ENCRYPTION_KEYS"
    )

    assert "is not set" in line


@pytest.mark.processes
def test_unknown_time_zone_is_named(tmp_path: Path) -> None:
    line = configuration_error(check(tmp_path, TIME_ZONE="Mars/Olympus_Mons"), "TIME_ZONE")

    assert "'Mars/Olympus_Mons' is not a known time zone" in line


@pytest.mark.processes
def test_env_file_fills_in_what_the_environment_lacks(tmp_path: Path) -> None:
    env_file = tmp_path / "pgwarden.env"
    env_file.write_text(f"SECRET_KEY={VALID_SECRET_KEY}\nDEBUG=maybe\n")

    # The environment wins over the file: DEBUG=false hides the file's bad DEBUG.
    from_file = check(tmp_path, SECRET_KEY=None, DEBUG="false", PGWARDEN_ENV_FILE=str(env_file))
    assert from_file.returncode == 0, from_file.stderr
    # Without DEBUG in the environment, the file's value is read.
    configuration_error(check(tmp_path, SECRET_KEY=None, PGWARDEN_ENV_FILE=str(env_file)), "DEBUG")

    env_file.write_text("SECRET_KEY=too-short\n")
    line = configuration_error(
        check(tmp_path, SECRET_KEY=None, PGWARDEN_ENV_FILE=str(env_file)), "SECRET_KEY"
    )
    assert "shorter than 32 characters" in line


@pytest.mark.processes
def test_an_mcp_timeout_out_of_range_stops_start_up_with_the_range(tmp_path: Path) -> None:
    line = configuration_error(
        check(tmp_path, PGWARDEN_MCP_MAX_TIMEOUT_MS="500"), "PGWARDEN_MCP_MAX_TIMEOUT_MS"
    )

    assert "'500' is under the minimum: use a whole number from 1000 to 3600000" in line


@pytest.mark.processes
def test_a_malformed_https_flag_stops_start_up(tmp_path: Path) -> None:
    line = configuration_error(check(tmp_path, PGWARDEN_HTTPS="tls"), "PGWARDEN_HTTPS")

    assert "'tls' is not a boolean" in line


@pytest.mark.processes
def test_makemigrations_reports_no_missing_migrations(tmp_path: Path) -> None:
    result = run_manage(
        "makemigrations",
        "--check",
        "--dry-run",
        env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'migrations.sqlite3'}"},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout


# Parsers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("No", False),
        ("0", False),
        ("off", False),
        ("", False),
    ],
)
def test_parse_bool(raw: str, expected: bool) -> None:
    assert parse_bool(raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "truee"])
def test_parse_bool_refuses_anything_else(raw: str) -> None:
    with pytest.raises(InvalidValue, match="is not a boolean"):
        parse_bool(raw)


def test_relative_sqlite_path_is_resolved_against_the_project() -> None:
    config = parse_database_url("sqlite:///var/pgwarden.sqlite3")

    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(BASE_DIR / "var" / "pgwarden.sqlite3")


def test_absolute_sqlite_path_is_kept(tmp_path: Path) -> None:
    config = parse_database_url(f"sqlite:///{tmp_path / 'x.sqlite3'}")

    assert config["NAME"] == str(tmp_path / "x.sqlite3")


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgres_url_is_parsed(scheme: str) -> None:
    config = parse_database_url(f"{scheme}://pgwarden:s%2Fcret@db.example.com:5433/registry")

    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert config["NAME"] == "registry"
    assert config["USER"] == "pgwarden"
    assert config["PASSWORD"] == "s/cret"
    assert config["HOST"] == "db.example.com"
    assert int(config["PORT"]) == 5433
    # An unreachable control database fails a request in seconds, not minutes.
    assert config["OPTIONS"]["connect_timeout"] == 5


def test_postgres_url_may_set_its_own_connect_timeout() -> None:
    config = parse_database_url("postgres://pgwarden@db.example.com/registry?connect_timeout=2")

    assert int(config["OPTIONS"]["connect_timeout"]) == 2


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("mysql://u:p@h/db", "has scheme 'mysql'"),
        ("no-scheme-at-all", r"has scheme '\(none\)'"),
        ("postgres://u:p@h:5432/", "names no database"),
        ("postgres://u:p@h:99999/db", "is not a valid URL"),
    ],
)
def test_parse_database_url_refuses(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidValue, match=complaint):
        parse_database_url(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@redis.example.com:6380/1",
        "redis://localhost",
        "unix:///run/redis/redis.sock",
    ],
)
def test_parse_redis_url_accepts_and_returns_the_url(raw: str) -> None:
    assert parse_redis_url(raw) == raw


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("http://127.0.0.1:6379/0", "has scheme 'http'"),
        ("redis://", "names no host"),
        ("redis://127.0.0.1:port/0", "is not a valid URL"),
        ("redis://[::1/0", "is not a valid URL"),
    ],
)
def test_parse_redis_url_refuses(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidValue, match=complaint):
        parse_redis_url(raw)


def test_parse_encryption_keys_keeps_order_and_refuses_an_empty_list() -> None:
    other = Fernet.generate_key().decode()

    assert parse_encryption_keys(f" {VALID_KEY} , {other} ") == [VALID_KEY, other]
    with pytest.raises(InvalidValue, match="is empty"):
        parse_encryption_keys(" , ")


def test_parse_origins_accepts_scheme_and_host() -> None:
    assert parse_origins("") == []
    assert parse_origins("https://pgw.example.com, http://127.0.0.1:8000") == [
        "https://pgw.example.com",
        "http://127.0.0.1:8000",
    ]


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("pgw.example.com", "not an origin"),
        ("ftp://pgw.example.com", "not an origin"),
        ("https://pgw.example.com/admin/", "has no path"),
    ],
)
def test_parse_origins_refuses(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidValue, match=complaint):
        parse_origins(raw)


def test_parse_time_zone() -> None:
    assert parse_time_zone("Europe/Paris") == "Europe/Paris"
    with pytest.raises(InvalidValue, match="not a known time zone"):
        parse_time_zone("Europe/Atlantis")


def test_parse_env_file(tmp_path: Path) -> None:
    assert parse_env_file("") is None
    assert parse_env_file(".env") == BASE_DIR / ".env"
    assert parse_env_file(str(tmp_path / "x.env")) == tmp_path / "x.env"


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("4", 4), (" 64 ", 64)])
def test_parse_positive_int(raw: str, expected: int) -> None:
    assert parse_positive_int(raw) == expected


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [("0", "is not a positive integer"), ("-3", "is not a positive integer"), ("", "integer")],
)
def test_parse_positive_int_refuses(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidValue, match=complaint):
        parse_positive_int(raw)


@pytest.mark.parametrize("raw", ["1000", "60000", "3600000", " 2500 "])
def test_int_between_accepts_the_range_and_its_ends(raw: str) -> None:
    assert int_between(1000, 3_600_000)(raw) == int(raw)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("999", "is under the minimum: use a whole number from 1000 to 3600000"),
        ("3600001", "is over the maximum: use a whole number from 1000 to 3600000"),
        ("0", "is not a positive integer"),
        ("-5000", "is not a positive integer"),
        ("60s", "is not an integer"),
        ("1.5", "is not an integer"),
    ],
)
def test_int_between_refuses(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidValue, match=complaint):
        int_between(1000, 3_600_000)(raw)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("PGWARDEN_HTTPS", None, False),
        ("PGWARDEN_HTTPS", "true", True),
        ("PGWARDEN_MCP_MAX_CONCURRENT_QUERIES", None, 4),
        ("PGWARDEN_MCP_MAX_CONCURRENT_QUERIES", "16", 16),
        ("PGWARDEN_MCP_MAX_TIMEOUT_MS", None, 60_000),
        ("PGWARDEN_MCP_MAX_TIMEOUT_MS", "1000", 1000),
        ("PGWARDEN_MCP_MAX_TIMEOUT_MS", "3600000", 3_600_000),
        ("PGWARDEN_MCP_LOCK_TIMEOUT_MS", None, 2000),
        ("PGWARDEN_MCP_LOCK_TIMEOUT_MS", "1", 1),
        ("PGWARDEN_MCP_LOCK_TIMEOUT_MS", "600000", 600_000),
    ],
)
def test_https_and_mcp_limits_read_their_default_and_accepted_values(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str | None, expected: object
) -> None:
    if raw is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, raw)

    assert env.read(name) == expected


@pytest.mark.parametrize(
    ("name", "raw", "complaint"),
    [
        ("PGWARDEN_HTTPS", "https", "'https' is not a boolean"),
        ("PGWARDEN_MCP_MAX_CONCURRENT_QUERIES", "0", "'0' is not a positive integer"),
        ("PGWARDEN_MCP_MAX_CONCURRENT_QUERIES", "four", "'four' is not an integer"),
        ("PGWARDEN_MCP_MAX_TIMEOUT_MS", "999", "'999' is under the minimum: use a whole number "),
        ("PGWARDEN_MCP_MAX_TIMEOUT_MS", "3600001", "'3600001' is over the maximum"),
        ("PGWARDEN_MCP_LOCK_TIMEOUT_MS", "0", "'0' is not a positive integer"),
        ("PGWARDEN_MCP_LOCK_TIMEOUT_MS", "600001", "from 1 to 600000"),
        ("PGWARDEN_MCP_LOCK_TIMEOUT_MS", "2s", "'2s' is not an integer"),
    ],
)
def test_https_and_mcp_limits_refuse_with_the_name_and_an_example(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, complaint: str
) -> None:
    monkeypatch.setenv(name, raw)

    with pytest.raises(ImproperlyConfigured) as excinfo:
        env.read(name)
    message = str(excinfo.value)
    assert message.startswith(f"{name} is malformed: ")
    assert complaint in message
    assert message.endswith(f"Example: {name}={VARIABLES[name].example}")


# read()


def test_read_uses_the_default_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_LEVEL", raising=False)

    assert env.read("LOG_LEVEL") == "INFO"


def test_read_quotes_a_plain_value_but_never_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    monkeypatch.setenv("CELERY_BROKER_URL", f"amqp://:{REDIS_PASSWORD}@h")

    with pytest.raises(ImproperlyConfigured, match="'chatty' is not one of"):
        env.read("LOG_LEVEL")
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env.read("CELERY_BROKER_URL")
    assert REDIS_PASSWORD not in str(excinfo.value)
    assert "the value has scheme 'amqp'" in str(excinfo.value)


@pytest.mark.parametrize("name", list(VARIABLES))
def test_every_variable_shows_an_example_that_parses(name: str) -> None:
    variable = VARIABLES[name]

    variable.parse(variable.example)  # raises InvalidValue if the example is wrong
