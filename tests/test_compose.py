"""docker-compose.yml, checked without Docker: against project.env, the real command and PostgreSQL.

Docker cannot run here, so these tests read the file as compose would (YAML with
merge keys, then ``${...}`` interpolation) and hold every part that can drift
against the code it names: variables against ``project.env.VARIABLES``, the
``register_cluster`` call against the command's own parser, shell scripts
against ``bash -n``, PostgreSQL settings against a real server.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import psycopg
import pytest
import yaml
from django.conf import settings
from django.urls import resolve

from endpoints.localcluster import LocalPostgresCluster
from endpoints.management.commands.register_cluster import Command as RegisterClusterCommand
from project.env import VARIABLES, render_env_example
from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {
    "db",
    "redis",
    "pg-primary",
    "pg-replica1",
    "pg-replica2",
    "init",
    "web",
    "worker",
    "beat",
}
PGWARDEN_SERVICES = {"init", "web", "worker", "beat"}
ONE_SHOT_SERVICES = {"init"}
COMPOSE_SECTION_MARKER = "# docker compose only:"

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


class MissingVariable(Exception):
    """``${NAME:?message}`` with NAME unset: compose stops with the message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def interpolate_text(text: str, environment: Mapping[str, str], used: set[str]) -> str:
    """Compose's interpolation: ``$$``, ``$NAME``, ``${NAME}`` and the -, ?, + forms."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        expression = match["braced"] if match["braced"] is not None else match["named"]
        parsed = _BRACED.match(expression)
        assert parsed is not None, f"compose cannot interpolate ${{{expression}}}"
        name, op, arg = parsed["name"], parsed["op"], parsed["arg"]
        used.add(name)
        value = environment.get(name)
        if op is None:
            return value or ""
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else str(value)
        if op.endswith("?"):
            if missing:
                raise MissingVariable(name, arg)
            return str(value)
        return "" if missing else arg  # the + form

    return _INTERPOLATION.sub(replace, text)


def interpolate(node: Any, environment: Mapping[str, str], used: set[str] | None = None) -> Any:
    """Interpolate every string value of a parsed compose file, as compose does."""
    used = used if used is not None else set()
    if isinstance(node, str):
        return interpolate_text(node, environment, used)
    if isinstance(node, dict):
        return {key: interpolate(value, environment, used) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, environment, used) for value in node]
    return node


def compose_only_variables() -> dict[str, str]:
    """The variables .env.example documents for docker-compose.yml alone, with their values."""
    text = render_env_example()
    assert COMPOSE_SECTION_MARKER in text
    # After the marker's own line: comments, and one NAME=value line per variable.
    section = text.split(COMPOSE_SECTION_MARKER, 1)[1].splitlines()[1:]
    return dict(line.split("=", 1) for line in section if line and not line.startswith("#"))


def example_environment() -> dict[str, str]:
    """A filled-in .env: every VARIABLES example, and a value for every compose-only one."""
    environment = {name: variable.example for name, variable in VARIABLES.items()}
    for name, default in compose_only_variables().items():
        # Letters and digits, as .env.example asks; distinct, so each can be traced.
        environment[name] = default or "Example0" + name.title().replace("_", "")
    return environment


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as compose sees it with a filled-in .env."""
    return interpolate(raw, example_environment())


def _services(compose: dict[str, Any], names: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in sorted(names):
        yield name, compose["services"][name]


def _managed_postgres(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service for name, service in compose["services"].items() if name.startswith("pg-")
    }


def _shell_lines(script: str) -> list[list[str]]:
    """The script's simple commands as argument lists (split at newlines, ;, &&, ||, |)."""
    separators = ";&|\n"
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=separators)
    lexer.whitespace = " \t\r"  # newlines end commands, unless quoted
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if set(token) <= set(separators):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _register_cluster_args(compose: dict[str, Any]) -> list[str]:
    command = compose["services"]["init"]["command"]
    assert command[:2] == ["sh", "-ec"], "init runs a shell script: migrate, then register"
    calls = [tokens for tokens in _shell_lines(command[2]) if "register_cluster" in tokens]
    assert len(calls) == 1, calls
    tokens = calls[0]
    position = tokens.index("register_cluster")
    assert tokens[position - 1] == "manage.py"
    return tokens[position + 1 :]


def test_the_stack_has_its_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_long_running_services_have_health_checks_and_restart(compose: dict[str, Any]) -> None:
    for name, service in _services(compose, SERVICES - ONE_SHOT_SERVICES):
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert service["restart"] == "unless-stopped", name
    for name, service in _services(compose, ONE_SHOT_SERVICES):
        assert service["restart"] == "no", f"{name} runs once; restarting it would loop"


def test_depends_on_names_services_and_waits_for_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on undefined {dependency}"
            if dependency in ONE_SHOT_SERVICES:
                assert spec["condition"] == "service_completed_successfully", (name, dependency)
            else:
                assert spec["condition"] == "service_healthy", (name, dependency)
                assert "healthcheck" in services[dependency], dependency


def test_pgwarden_services_set_only_variables_project_env_reads(compose: dict[str, Any]) -> None:
    required = {name for name, variable in VARIABLES.items() if variable.default is None}
    for name, service in _services(compose, PGWARDEN_SERVICES):
        environment = service["environment"]
        assert set(environment) <= set(VARIABLES), (name, set(environment) - set(VARIABLES))
        assert required <= set(environment), (name, required - set(environment))
        for variable, value in environment.items():
            # As settings.py would read them: each value must parse.
            VARIABLES[variable].parse(value)


def test_secrets_are_required_with_a_message(raw: dict[str, Any]) -> None:
    """Without SECRET_KEY or the keys, `docker compose up` stops and says what to set."""
    secrets = {
        name for name, variable in VARIABLES.items() if variable.secret and variable.default is None
    }
    for name, service in _services(raw, PGWARDEN_SERVICES):
        for variable in secrets:
            value = service["environment"][variable]
            for environment in ({}, {variable: ""}):
                with pytest.raises(MissingVariable) as caught:
                    interpolate_text(value, environment, set())
                assert caught.value.name == variable, name
                assert ".env.example" in caught.value.message


def test_compose_only_required_variables_stop_compose(raw: dict[str, Any]) -> None:
    required = [name for name, default in compose_only_variables().items() if not default]
    assert required, "the compose section of .env.example lists the compose passwords"
    for name in required:
        environment = {**example_environment(), name: ""}
        with pytest.raises(MissingVariable) as caught:
            interpolate(raw, environment)
        assert caught.value.name == name


def test_interpolated_variables_are_exactly_the_documented_ones(raw: dict[str, Any]) -> None:
    used: set[str] = set()
    interpolate(raw, example_environment(), used)
    compose_only = set(compose_only_variables())

    # A shell variable that lacks its `$$` escape would show up here as undocumented.
    assert used - set(VARIABLES) == compose_only
    assert not compose_only & set(VARIABLES)


def test_urls_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    db = services["db"]["environment"]
    for name, service in _services(compose, PGWARDEN_SERVICES):
        database = VARIABLES["DATABASE_URL"].parse(service["environment"]["DATABASE_URL"])
        assert database["ENGINE"] == "django.db.backends.postgresql", name
        assert (database["HOST"], database["PORT"]) == ("db", 5432), name
        assert (database["NAME"], database["USER"]) == (db["POSTGRES_DB"], db["POSTGRES_USER"])
        assert database["PASSWORD"] == example_environment()["CONTROL_DB_PASSWORD"]
        redis_url = VARIABLES["REDIS_URL"].parse(service["environment"]["REDIS_URL"])
        assert redis_url.startswith("redis://redis:6379/"), name
        # Redis directly; the database directly or through init, which waits for it.
        assert "redis" in service["depends_on"], name
        assert {"db", "init"} & set(service["depends_on"]), name


def test_the_control_database_password_is_the_one_in_database_url(
    compose: dict[str, Any],
) -> None:
    db = compose["services"]["db"]
    secret = _mounted_secret(db, db["environment"]["POSTGRES_PASSWORD_FILE"])
    assert compose["secrets"][secret] == {"environment": "CONTROL_DB_PASSWORD"}


def test_register_cluster_call_parses_with_the_real_command(compose: dict[str, Any]) -> None:
    parser = RegisterClusterCommand().create_parser("manage.py", "register_cluster")

    options = parser.parse_args(_register_cluster_args(compose))

    managed = _managed_postgres(compose)
    assert options.name == "docker"
    assert sorted(endpoint.host for endpoint in options.endpoints) == sorted(managed)
    for endpoint in options.endpoints:
        node = managed[endpoint.host]
        clone_from = node["environment"].get("CLONE_FROM")
        # The node that initialises its own database is the primary; the others clone it.
        assert endpoint.role == ("replica" if clone_from else "primary"), endpoint
        assert clone_from in (None, *(e.host for e in options.endpoints if e.role == "primary"))
        assert endpoint.port == 5432
    # The superuser the image creates when POSTGRES_USER is not set.
    assert options.user == "postgres"
    assert "POSTGRES_USER" not in managed["pg-primary"]["environment"]


def test_register_cluster_reads_the_password_the_primary_was_given(compose: dict[str, Any]) -> None:
    init = compose["services"]["init"]
    options = (
        RegisterClusterCommand()
        .create_parser("manage.py", "register_cluster")
        .parse_args(_register_cluster_args(compose))
    )
    primary = compose["services"]["pg-primary"]

    assert options.password_file is not None
    assert not options.password_stdin
    init_secret = _mounted_secret(init, str(options.password_file))
    primary_secret = _mounted_secret(primary, primary["environment"]["POSTGRES_PASSWORD_FILE"])
    assert init_secret == primary_secret
    assert compose["secrets"][init_secret] == {"environment": "MANAGED_PG_PASSWORD"}
    # The image's user is not root: the copied-in secret must be readable by others.
    [mount] = [m for m in init["secrets"] if isinstance(m, dict) and m["source"] == init_secret]
    assert mount["mode"] == 0o444


def test_init_migrates_before_it_registers(compose: dict[str, Any]) -> None:
    lines = _shell_lines(compose["services"]["init"]["command"][2])
    commands = [line[line.index("manage.py") + 1] for line in lines if "manage.py" in line]

    assert commands == ["migrate", "ensure_admin", "register_cluster"]
    for dependency in ("db", *_managed_postgres(compose)):
        assert compose["services"]["init"]["depends_on"][dependency] == {
            "condition": "service_healthy"
        }


def test_the_managed_password_reaches_containers_only_as_a_file(compose: dict[str, Any]) -> None:
    password = example_environment()["MANAGED_PG_PASSWORD"]
    for name, service in compose["services"].items():
        assert password not in yaml.safe_dump(service.get("environment", {})), name
        assert password not in yaml.safe_dump(service.get("command", "")), name
        assert password not in yaml.safe_dump(service.get("entrypoint", "")), name
    # Only the guard that makes compose stop early holds the value, and no service reads it.
    assert compose["x-required"] == {"managed-pg-password": password}


def test_commands_run_the_project(compose: dict[str, Any]) -> None:
    services = compose["services"]
    web = services["web"]["command"]
    assert web[:2] == ["gunicorn", "project.wsgi"]
    assert settings.WSGI_APPLICATION == "project.wsgi.application"
    assert services["worker"]["command"][:3] == ["celery", "--app=project", "worker"]
    assert services["beat"]["command"][:3] == ["celery", "--app=project", "beat"]
    assert "--app=project" in services["worker"]["healthcheck"]["test"][1]


def test_web_health_check_asks_for_a_real_page_on_the_bound_port(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    [bind] = [arg for arg in web["command"] if arg.startswith("--bind=")]
    port = bind.rsplit(":", 1)[1]
    code = web["healthcheck"]["test"][3]
    [url] = re.findall(r"'(http://[^']+)'", code)

    assert url.startswith(f"http://127.0.0.1:{port}/")
    assert "127.0.0.1" in web["environment"]["ALLOWED_HOSTS"].split(",")
    assert resolve(url.split(port, 1)[1]).url_name == "login"
    assert web["ports"] == [f"127.0.0.1:8000:{port}"]
    compile(code, "healthcheck", "exec")


def test_beat_health_check_watches_the_schedule_file_settings_name(
    compose: dict[str, Any],
) -> None:
    code = compose["services"]["beat"]["healthcheck"]["test"][3]
    schedule = Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).relative_to(ROOT)

    assert f"'/app/{schedule}*'" in code
    compile(code, "healthcheck", "exec")


def test_pgwarden_services_share_one_image_built_from_this_checkout(
    compose: dict[str, Any],
) -> None:
    builds = {
        yaml.safe_dump(service["build"]) for _, service in _services(compose, PGWARDEN_SERVICES)
    }
    images = {service["image"] for _, service in _services(compose, PGWARDEN_SERVICES)}
    assert len(builds) == 1
    assert len(images) == 1
    build = compose["services"]["web"]["build"]
    assert build["context"] == "."
    dockerfile = build["dockerfile_inline"]
    instructions = [line.split() for line in dockerfile.splitlines() if line and line[0] != "#"]

    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert ["RUN", "pip", "install", "-r", "requirements.txt"] in instructions
    copied = {words[1] for words in instructions if words[0] == "COPY"}
    # Every top-level package ships, and nothing is copied wholesale (.env, .venv, var/).
    packages = {
        path.parent.name for path in ROOT.glob("*/__init__.py") if path.parent.name not in {"tests"}
    }
    assert copied == {"requirements.txt", "manage.py", *packages}
    local_apps = {app.split(".")[0] for app in settings.INSTALLED_APPS if "." not in app}
    assert local_apps <= packages
    [user] = [words[1] for words in instructions if words[0] == "USER"]
    assert re.fullmatch(r"\d+:\d+", user), "a numeric user: Docker copies secrets in by uid"


def test_shell_scripts_are_valid(compose: dict[str, Any]) -> None:
    scripts: list[tuple[str, str, str]] = []
    for name, service in compose["services"].items():
        for key in ("command", "entrypoint"):
            argv = service.get(key)
            if isinstance(argv, list) and argv[0] in {"sh", "bash"}:
                scripts.append((f"{name} {key}", argv[0], argv[-1]))
        test = service.get("healthcheck", {}).get("test", [])
        if test and test[0] == "CMD-SHELL":
            scripts.append((f"{name} healthcheck", "sh", test[1]))
    assert len(scripts) >= 5
    for label, shell, script in scripts:
        result = subprocess.run(
            [shell, "-n", "-c", script], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{label}: {result.stderr}"


def _postgres_settings(compose: dict[str, Any], service: str) -> dict[str, str]:
    script = compose["services"][service]["entrypoint"][-1]
    [exec_line] = [
        line for line in _shell_lines(script) if line[:2] == ["exec", "docker-entrypoint.sh"]
    ]
    assert exec_line[2] == "postgres"
    flags = exec_line[3:]
    assert flags[::2] == ["-c"] * (len(flags) // 2)
    return dict(flag.split("=", 1) for flag in flags[1::2])


def test_managed_nodes_run_postgres_15_with_real_settings(
    compose: dict[str, Any], pg_cluster: LocalPostgresCluster
) -> None:
    nodes = _managed_postgres(compose)
    postgres_settings = _postgres_settings(compose, "pg-primary")
    assert postgres_settings["wal_level"] == "replica"
    assert postgres_settings["hba_file"] == "/etc/pgwarden_hba.conf"

    # The test cluster's server stands in for postgres:15 (Debian bookworm ships 15 too; the
    # settings used here exist unchanged from PostgreSQL 13 on).
    with psycopg.connect(**pg_cluster.conninfo(pg_cluster.primary)) as conn:
        rows = conn.execute(
            "SELECT name, vartype, enumvals FROM pg_settings WHERE name = ANY(%s)",
            (list(postgres_settings),),
        ).fetchall()
    known = {name: (vartype, enumvals) for name, vartype, enumvals in rows}
    for name, value in postgres_settings.items():
        assert name in known, f"{name} is not a PostgreSQL setting"
        vartype, enumvals = known[name]
        if vartype == "bool":
            assert value in {"on", "off"}, name
        if vartype == "enum":
            assert value in enumvals, name
    for name, node in nodes.items():
        assert node["image"] == "postgres:15", name
        assert _postgres_settings(compose, name) == postgres_settings, name
        assert node["environment"]["PGDATA"].startswith("/var/lib/postgresql/data/"), name
        [volume] = node["volumes"]
        assert volume.endswith(":/var/lib/postgresql/data"), name


def test_the_hba_file_admits_replication_with_a_password(compose: dict[str, Any]) -> None:
    script = compose["services"]["pg-primary"]["entrypoint"][-1]
    [printf] = [line for line in _shell_lines(script) if line[-1] == "/etc/pgwarden_hba.conf"]
    assert printf[:2] == ["printf", "%s\\n"]
    assert printf[-2:] == [">", "/etc/pgwarden_hba.conf"]
    rules = [line.split() for line in printf[2:-2] if not line.startswith("#")]

    # `all` in the database column never matches a replication connection: it needs its own.
    assert ["host", "replication", "all", "all", "scram-sha-256"] in rules
    assert ["host", "all", "all", "all", "scram-sha-256"] in rules
    assert not any(rule[0] == "host" and rule[-1] == "trust" for rule in rules)


def test_replicas_clone_from_the_primary_into_their_own_slots(compose: dict[str, Any]) -> None:
    nodes = _managed_postgres(compose)
    replicas = {name: node for name, node in nodes.items() if "CLONE_FROM" in node["environment"]}
    slots = [node["environment"]["REPLICATION_SLOT"] for node in replicas.values()]

    assert set(replicas) == {"pg-replica1", "pg-replica2"}
    assert len(set(slots)) == len(slots)
    for slot in slots:
        assert re.fullmatch(r"[a-z0-9_]{1,63}", slot), "PostgreSQL's rule for slot names"
    for name, node in replicas.items():
        assert node["environment"]["CLONE_FROM"] == "pg-primary", name
        assert node["depends_on"] == {"pg-primary": {"condition": "service_healthy"}}, name
        # Without it, an empty PGDATA would be initialised as a second, unrelated primary.
        assert "POSTGRES_PASSWORD_FILE" not in node["environment"], name
        assert _mounted_secret(node, "/run/secrets/managed_pg_password") == "managed_pg_password"


def _mounted_secret(service: dict[str, Any], path: str) -> str:
    """The secret ``service`` mounts at ``path``; fails if none does."""
    for mount in service.get("secrets", []):
        source = mount if isinstance(mount, str) else mount["source"]
        target = source if isinstance(mount, str) else mount.get("target", source)
        full = target if target.startswith("/") else f"/run/secrets/{target}"
        if PurePosixPath(full) == PurePosixPath(path):
            return source
    raise AssertionError(f"no secret is mounted at {path}")


def test_secrets_from_the_environment_are_guarded(raw: dict[str, Any]) -> None:
    """compose accepts an empty variable as a secret; a `:?` somewhere refuses it at once."""
    text = COMPOSE_FILE.read_text()
    for name, secret in raw["secrets"].items():
        variable = secret["environment"]
        assert re.search(r"\$\{" + variable + r":\?[^}]+\}", text), (name, variable)
