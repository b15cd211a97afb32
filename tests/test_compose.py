"""docker-compose.yml, as the real compose binary resolves it, against the code it names.

``docker compose config`` needs no Docker engine: it applies merge keys, interpolation and
the schema as ``up`` would. Its model, with .env.example filled in, is held against
``project.env.VARIABLES``, the ``register_cluster`` parser, ``bash -n`` and a real server.
"""

from __future__ import annotations

import argparse
import importlib.resources
import itertools
import json
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.urls import resolve

from endpoints.core.purposes import (
    ASSISTANT_ROLE,
    ASSISTANT_WRITE_ROLE,
    assistant_role_sql,
    quote_ident,
)
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.management.commands.register_cluster import Command as RegisterClusterCommand
from project.env import VARIABLES
from tests.helpers import ROOT

# Every test reads what the `docker compose` binary (a child process) makes of the file.
pytestmark = pytest.mark.processes

# The binary itself: the package's console script (.venv/bin/docker-compose) exits 0
# whatever the binary returns.
COMPOSE = Path(str(importlib.resources.files("compose") / "docker-compose"))
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_SECTION_MARKER = "# docker compose only:"
PGWARDEN_SERVICES = {"init", "web", "worker", "beat"}
ONE_SHOT_SERVICES = {"init"}
MANAGED_NODES = {"pg-primary", "pg-replica1", "pg-replica2"}
SERVICES = {"db", "redis", *MANAGED_NODES, *PGWARDEN_SERVICES}
# The variables behind the managed cluster's secrets.
MANAGED_PASSWORDS = {
    "MANAGED_PG_PASSWORD",
    "MANAGED_ASSISTANT_PASSWORD",
    "MANAGED_ASSISTANT_WRITE_PASSWORD",
}
# Where the postgres image looks for scripts to run once, after initdb.
INITDB_DIR = "/docker-entrypoint-initdb.d/"

Model = dict[str, Any]


def compose_only_variables() -> dict[str, str]:
    """The variables .env.example documents for docker-compose.yml alone, with their values."""
    # After the marker's own line: comments, and one NAME=value line per variable.
    section = ENV_EXAMPLE.read_text().split(COMPOSE_SECTION_MARKER, 1)[1].split("\n", 1)[1]
    return dict(line.split("=", 1) for line in section.splitlines() if line and line[0] != "#")


def documented_required() -> set[str]:
    """Variables .env.example marks "Required.", or its compose section says compose needs."""
    text = ENV_EXAMPLE.read_text()
    header = text.split(COMPOSE_SECTION_MARKER, 1)[1].split("\n\n", 1)[0]
    marked = re.findall(r"^# Required\.\n(\w+)=", text, re.MULTILINE)
    return {*marked, *(name for name in VARIABLES if re.search(rf"\b{name}\b", header))}


def example_value(name: str) -> str:
    # pgwarden's examples parse; compose's passwords are letters only, as .env.example asks,
    # and distinct, so each can be traced in the model.
    return VARIABLES[name].example if name in VARIABLES else name.lower().replace("_", "")


def write_env_file(path: Path, values: Mapping[str, str | None]) -> Path:
    """.env.example with ``values`` put in; None leaves the variable out."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        if name not in values:
            lines.append(line)
        elif values[name] is not None:
            lines.append(f"{name}={values[name]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def filled_in() -> dict[str, str | None]:
    return {name: example_value(name) for name in documented_required()}


def run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # --file: no docker-compose.override.yml joins in; --env-file replaces the .env lookup,
        # so the checkout's .env (`make run` writes one) is never read.
        [str(COMPOSE), "--file", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # Nothing inherited: compose takes variables from the process environment before the
        # env file, and this process exports SECRET_KEY and the rest (tests/settings.py).
        env={},
    )


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_env_file(tmp_path_factory.mktemp("compose") / "example.env", filled_in())


@pytest.fixture(scope="module")
def model(env_file: Path) -> Model:
    result = run_compose(env_file, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    # `config` prints every `$` as `$$`, so that its output is a compose file again; undone,
    # the strings are what the containers get.
    return json.loads(result.stdout.replace("$$", "$"))


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


def _secret_at(service: Model, path: str) -> str:
    """The secret ``service`` mounts at ``path``."""
    return {mount["target"]: mount["source"] for mount in service["secrets"]}[path]


def _mount(service: Model, secret: str) -> Model:
    [mount] = [mount for mount in service["secrets"] if mount["source"] == secret]
    return mount


def _register_cluster_options(model: Model) -> argparse.Namespace:
    command = model["services"]["init"]["command"]
    assert command[:2] == ["sh", "-ec"], "init runs a shell script: migrate, then register"
    [call] = [tokens for tokens in _shell_lines(command[2]) if "register_cluster" in tokens]
    position = call.index("register_cluster")
    assert call[position - 1] == "manage.py"
    parser = RegisterClusterCommand().create_parser("manage.py", "register_cluster")
    return parser.parse_args(call[position + 1 :])


def test_compose_accepts_the_example_with_its_required_values_filled_in(env_file: Path) -> None:
    result = run_compose(env_file, "config", "--quiet")

    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("blank", [False, True], ids=["unset", "blank"])
@pytest.mark.parametrize("name", sorted(documented_required()))
def test_each_required_variable_stops_compose_with_a_message(
    tmp_path: Path, name: str, blank: bool
) -> None:
    env_file = write_env_file(
        tmp_path / "example.env", {**filled_in(), name: "" if blank else None}
    )

    result = run_compose(env_file, "config", "--quiet")

    assert result.returncode != 0
    expected = f"required variable {name} is missing a value: set {name} in .env (see .env.example)"
    assert expected in result.stderr


def test_compose_interpolates_exactly_the_documented_variables(
    env_file: Path, model: Model
) -> None:
    result = run_compose(env_file, "config", "--variables", "--format", "json")
    assert result.returncode == 0, result.stderr
    variables: dict[str, dict[str, Any]] = json.loads(result.stdout)
    compose_only = set(compose_only_variables())

    # A shell variable that lacks its `$$` escape would show up here as undocumented.
    assert set(variables) - set(VARIABLES) == compose_only
    assert not compose_only & set(VARIABLES)
    required = {name for name, variable in variables.items() if variable["Required"]}
    assert required == documented_required()
    # compose accepts an empty variable as a secret; only a `:?` refuses it at once.
    for name, secret in model["secrets"].items():
        assert secret["environment"] in required, name


def test_long_running_services_have_health_checks_and_restart(model: Model) -> None:
    assert set(model["services"]) == SERVICES
    for name, service in model["services"].items():
        if name in ONE_SHOT_SERVICES:
            assert service["restart"] == "no", f"{name} runs once; restarting it would loop"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert service["restart"] == "unless-stopped", name


def test_depends_on_waits_for_health_or_completion(model: Model) -> None:
    services = model["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            if dependency in ONE_SHOT_SERVICES:
                assert spec["condition"] == "service_completed_successfully", (name, dependency)
            else:
                assert spec["condition"] == "service_healthy", (name, dependency)
                assert "healthcheck" in services[dependency], dependency


def test_pgwarden_services_set_only_variables_project_env_reads(model: Model) -> None:
    required = {name for name, variable in VARIABLES.items() if variable.default is None}
    for name in PGWARDEN_SERVICES:
        environment = model["services"][name]["environment"]
        assert set(environment) <= set(VARIABLES), (name, set(environment) - set(VARIABLES))
        assert required <= set(environment), (name, required - set(environment))
        for variable, value in environment.items():
            # As settings.py would read them: each value must parse.
            VARIABLES[variable].parse(value)


def test_urls_point_at_the_compose_services(model: Model) -> None:
    db = model["services"]["db"]
    for name in PGWARDEN_SERVICES:
        service = model["services"][name]
        database = VARIABLES["DATABASE_URL"].parse(service["environment"]["DATABASE_URL"])
        assert database["ENGINE"] == "django.db.backends.postgresql", name
        assert (database["HOST"], database["PORT"]) == ("db", 5432), name
        assert database["NAME"] == db["environment"]["POSTGRES_DB"], name
        assert database["USER"] == db["environment"]["POSTGRES_USER"], name
        assert database["PASSWORD"] == example_value("CONTROL_DB_PASSWORD")
        redis_url = VARIABLES["REDIS_URL"].parse(service["environment"]["REDIS_URL"])
        assert redis_url.startswith("redis://redis:6379/"), name
        # Redis directly; the database directly or through init, which waits for it.
        assert "redis" in service["depends_on"], name
        assert {"db", "init"} & set(service["depends_on"]), name
    # db is given the password DATABASE_URL embeds.
    secret = _secret_at(db, db["environment"]["POSTGRES_PASSWORD_FILE"])
    assert model["secrets"][secret]["environment"] == "CONTROL_DB_PASSWORD"


def test_register_cluster_call_parses_with_the_real_command(model: Model) -> None:
    options = _register_cluster_options(model)

    nodes = {name: model["services"][name] for name in MANAGED_NODES}
    assert options.name == "docker"
    assert sorted(endpoint.host for endpoint in options.endpoints) == sorted(nodes)
    primaries = [endpoint.host for endpoint in options.endpoints if endpoint.role == "primary"]
    for endpoint in options.endpoints:
        clone_from = nodes[endpoint.host]["environment"].get("CLONE_FROM")
        # The node that initialises its own database is the primary; the others clone it.
        assert endpoint.role == ("replica" if clone_from else "primary"), endpoint
        assert clone_from in (None, *primaries)
        assert endpoint.port == 5432
    # The superuser the image creates when POSTGRES_USER is not set.
    assert options.user == "postgres"
    assert "POSTGRES_USER" not in nodes["pg-primary"]["environment"]


def test_init_migrates_before_it_registers(model: Model) -> None:
    init = model["services"]["init"]
    lines = _shell_lines(init["command"][2])
    commands = [line[line.index("manage.py") + 1] for line in lines if "manage.py" in line]

    assert commands == ["migrate", "ensure_admin", "register_cluster"]
    for dependency in ("db", *MANAGED_NODES):
        assert init["depends_on"][dependency]["condition"] == "service_healthy", dependency


def test_the_managed_password_reaches_containers_only_as_a_file(model: Model) -> None:
    options = _register_cluster_options(model)
    init = model["services"]["init"]
    primary = model["services"]["pg-primary"]
    password = example_value("MANAGED_PG_PASSWORD")

    assert options.password_file is not None
    assert not options.password_stdin
    secret = _secret_at(init, str(options.password_file))
    assert secret == _secret_at(primary, primary["environment"]["POSTGRES_PASSWORD_FILE"])
    assert model["secrets"][secret]["environment"] == "MANAGED_PG_PASSWORD"
    # The image's user is not root: the copied-in secret must be readable by others.
    [mount] = [mount for mount in init["secrets"] if mount["source"] == secret]
    assert int(mount["mode"], 8) == 0o444
    for name, service in model["services"].items():
        assert password not in json.dumps(service), name
    # Only the guards that make compose stop early hold the values, and no service reads them.
    assert model["x-required"] == {
        name.lower().replace("_", "-"): example_value(name) for name in MANAGED_PASSWORDS
    }


def test_init_registers_the_assistant_roles_with_passwords_from_secret_files(
    model: Model,
) -> None:
    options = _register_cluster_options(model)
    init = model["services"]["init"]
    primary = model["services"]["pg-primary"]

    assert (options.assistant_user, options.assistant_write_user) == (
        ASSISTANT_ROLE,
        ASSISTANT_WRITE_ROLE,
    )
    for variable, path in [
        ("MANAGED_ASSISTANT_PASSWORD", options.assistant_password_file),
        ("MANAGED_ASSISTANT_WRITE_PASSWORD", options.assistant_write_password_file),
    ]:
        assert path is not None, variable
        secret = _secret_at(init, str(path))
        assert model["secrets"][secret]["environment"] == variable
        # The primary reads the same file at the same path when it creates the role (see
        # the test of its init script), as user postgres; init as its image's user.
        assert _secret_at(primary, str(path)) == secret
        assert int(_mount(init, secret)["mode"], 8) == 0o444, variable
        assert int(_mount(primary, secret)["mode"], 8) == 0o444, variable
        for name, service in model["services"].items():
            assert example_value(variable) not in json.dumps(service), (variable, name)
    # Replicas never initialise a database: they need only the replication password.
    for name in MANAGED_NODES - {"pg-primary"}:
        mounted = {mount["source"] for mount in model["services"][name]["secrets"]}
        assert mounted == {"managed_pg_password"}, name


def test_commands_run_the_project(model: Model) -> None:
    services = model["services"]
    assert services["web"]["command"][:2] == ["gunicorn", "project.wsgi"]
    assert settings.WSGI_APPLICATION == "project.wsgi.application"
    assert services["worker"]["command"][:3] == ["celery", "--app=project", "worker"]
    assert services["beat"]["command"][:3] == ["celery", "--app=project", "beat"]
    assert "--app=project" in services["worker"]["healthcheck"]["test"][1]


def test_web_health_check_asks_the_liveness_endpoint_on_the_bound_port(model: Model) -> None:
    web = model["services"]["web"]
    [bind] = [arg for arg in web["command"] if arg.startswith("--bind=")]
    port = bind.rsplit(":", 1)[1]
    code = web["healthcheck"]["test"][3]
    [url] = re.findall(r"'(http://[^']+)'", code)

    assert url.startswith(f"http://127.0.0.1:{port}/")
    assert "127.0.0.1" in VARIABLES["ALLOWED_HOSTS"].parse(web["environment"]["ALLOWED_HOSTS"])
    assert resolve(url.split(port, 1)[1]).url_name == "healthz"
    published = [(p["host_ip"], p["published"], p["target"]) for p in web["ports"]]
    assert published == [("127.0.0.1", compose_only_variables()["PGWARDEN_WEB_PORT"], int(port))]
    compile(code, "healthcheck", "exec")


def test_beat_health_check_watches_the_schedule_file_settings_name(model: Model) -> None:
    code = model["services"]["beat"]["healthcheck"]["test"][3]
    schedule = Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).relative_to(ROOT)

    assert f"'/app/{schedule}*'" in code
    compile(code, "healthcheck", "exec")


def test_pgwarden_services_share_one_image_built_from_this_checkout(model: Model) -> None:
    services = [model["services"][name] for name in PGWARDEN_SERVICES]
    assert len({json.dumps(service["build"], sort_keys=True) for service in services}) == 1
    assert len({service["image"] for service in services}) == 1
    build = services[0]["build"]
    assert Path(build["context"]) == ROOT
    dockerfile = build["dockerfile_inline"]
    instructions = [line.split() for line in dockerfile.splitlines() if line and line[0] != "#"]

    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert ["RUN", "pip", "install", "-r", "requirements.txt"] in instructions
    copied = {words[1] for words in instructions if words[0] == "COPY"}
    # Every runtime package ships (not the tests or the benchmarks), and nothing is copied
    # wholesale (.env, .venv, var/).
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert copied == {"requirements.txt", "manage.py", *packages}
    local_apps = {app.split(".")[0] for app in settings.INSTALLED_APPS if "." not in app}
    assert local_apps <= packages
    [user] = [words[1] for words in instructions if words[0] == "USER"]
    assert re.fullmatch(r"\d+:\d+", user), "a numeric user: Docker copies secrets in by uid"


def test_shell_scripts_are_valid(model: Model) -> None:
    scripts: list[tuple[str, str, str]] = []
    for name, service in model["services"].items():
        for key in ("command", "entrypoint"):
            argv = service.get(key)
            if isinstance(argv, list) and argv[0] in {"sh", "bash"}:
                scripts.append((f"{name} {key}", argv[0], argv[-1]))
        test = service.get("healthcheck", {}).get("test", [])
        if test and test[0] == "CMD-SHELL":
            scripts.append((f"{name} healthcheck", "sh", test[1]))
    # The image's entrypoint, a bash script, sources it.
    scripts.append(("pg-primary init script", "bash", _initdb_script(model)[1]))
    assert len(scripts) >= 6
    for label, shell, script in scripts:
        result = subprocess.run(
            [shell, "-n", "-c", script], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{label}: {result.stderr}"


def _postgres_settings(model: Model, service: str) -> dict[str, str]:
    script = model["services"][service]["entrypoint"][-1]
    [exec_line] = [
        line for line in _shell_lines(script) if line[:2] == ["exec", "docker-entrypoint.sh"]
    ]
    assert exec_line[2] == "postgres"
    flags = exec_line[3:]
    assert flags[::2] == ["-c"] * (len(flags) // 2)
    return dict(flag.split("=", 1) for flag in flags[1::2])


def test_managed_nodes_run_postgres_15_with_real_settings(
    model: Model, pg_cluster: LocalPostgresCluster
) -> None:
    postgres_settings = _postgres_settings(model, "pg-primary")
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
    for name in MANAGED_NODES:
        node = model["services"][name]
        assert node["image"] == "postgres:15", name
        assert _postgres_settings(model, name) == postgres_settings, name
        assert node["environment"]["PGDATA"].startswith("/var/lib/postgresql/data/"), name
        [volume] = node["volumes"]
        assert (volume["type"], volume["target"]) == ("volume", "/var/lib/postgresql/data"), name


def test_the_hba_file_admits_replication_with_a_password(model: Model) -> None:
    script = model["services"]["pg-primary"]["entrypoint"][-1]
    [printf] = [line for line in _shell_lines(script) if line[-1] == "/etc/pgwarden_hba.conf"]
    assert printf[:2] == ["printf", "%s\\n"]
    assert printf[-2:] == [">", "/etc/pgwarden_hba.conf"]
    rules = [line.split() for line in printf[2:-2] if not line.startswith("#")]

    # `all` in the database column never matches a replication connection: it needs its own.
    assert ["host", "replication", "all", "all", "scram-sha-256"] in rules
    assert ["host", "all", "all", "all", "scram-sha-256"] in rules
    assert not any(rule[0] == "host" and rule[-1] == "trust" for rule in rules)


def test_replicas_clone_from_the_primary_into_their_own_slots(model: Model) -> None:
    nodes = {name: model["services"][name] for name in MANAGED_NODES}
    replicas = {name: node for name, node in nodes.items() if "CLONE_FROM" in node["environment"]}
    slots = [node["environment"]["REPLICATION_SLOT"] for node in replicas.values()]

    assert set(replicas) == {"pg-replica1", "pg-replica2"}
    assert len(set(slots)) == len(slots)
    for slot in slots:
        assert re.fullmatch(r"[a-z0-9_]{1,63}", slot), "PostgreSQL's rule for slot names"
    for name, node in replicas.items():
        assert node["environment"]["CLONE_FROM"] == "pg-primary", name
        assert set(node["depends_on"]) == {"pg-primary"}, name
        assert node["depends_on"]["pg-primary"]["condition"] == "service_healthy", name
        # Without it, an empty PGDATA would be initialised as a second, unrelated primary.
        assert "POSTGRES_PASSWORD_FILE" not in node["environment"], name
        assert _secret_at(node, "/run/secrets/managed_pg_password") == "managed_pg_password"


def _initdb_script(model: Model) -> tuple[str, str]:
    """The path and text of the script pg-primary's entrypoint writes for the image's init."""
    entrypoint = model["services"]["pg-primary"]["entrypoint"][-1]
    [match] = re.finditer(
        rf"^ *cat > ({re.escape(INITDB_DIR)}\S+) <<'(\w+)'\n(.*?)^\2$",
        entrypoint,
        re.MULTILINE | re.DOTALL,
    )
    return match[1], match[3]


def _initdb_input(script: str, tmp_path: Path) -> tuple[str, str]:
    """The database the init script's psql connects to, and the SQL it is given.

    The script is sourced as the image sources it, with a stand-in for the image's
    ``docker_process_sql`` (psql with ``--dbname "$POSTGRES_DB"``, then the arguments given).
    """
    script_file = tmp_path / "script.sh"
    script_file.write_text(script)
    args_file, stdin_file = tmp_path / "args", tmp_path / "stdin"
    stand_in = """
        docker_process_sql() {
          printf '%s\\0' --dbname "$POSTGRES_DB" "$@" > "$ARGS_FILE"
          cat > "$STDIN_FILE"
        }
    """
    result = subprocess.run(
        ["bash", "-c", f'set -Eeo pipefail\n{stand_in}\n. "$1"', "bash", str(script_file)],
        # The image's default: POSTGRES_DB is POSTGRES_USER, postgres unless set.
        env={"POSTGRES_DB": "postgres", "ARGS_FILE": str(args_file), "STDIN_FILE": str(stdin_file)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    args = args_file.read_text().split("\0")[:-1]
    # psql takes the last --dbname given.
    dbname = [value for option, value in itertools.pairwise(args) if option == "--dbname"][-1]
    return dbname, stdin_file.read_text()


def _role_statements(psql_script: str) -> list[tuple[str, list[str]]]:
    """Each ``\\set pw `cat FILE``` of a psql script: FILE, and the statements that follow."""
    groups: list[tuple[str, list[str]]] = []
    for line in psql_script.splitlines():
        password = re.fullmatch(r"\\set pw `cat (\S+)`", line)
        if password:
            groups.append((password[1], []))
        else:
            # One statement a line, each after a password, and no other meta-command.
            assert groups, line
            assert line.endswith(";"), line
            assert not line.startswith("\\"), line
            groups[-1][1].append(line.removesuffix(";"))
    return groups


def test_the_primary_creates_the_assistant_roles_with_the_sql_of_assistant_role_sql(
    model: Model, tmp_path: Path
) -> None:
    options = _register_cluster_options(model)
    path, script = _initdb_script(model)
    dbname, psql_script = _initdb_input(script, tmp_path)

    # Sourced, not run: it needs the image's docker_process_sql.
    assert path.endswith(".sh")
    assert dbname == options.dbname == "postgres"
    # Each role with the password from the file `init` registers for it.
    assert _role_statements(psql_script) == [
        (
            str(options.assistant_password_file),
            assistant_role_sql(ASSISTANT_ROLE, ":'pw'", writes=False),
        ),
        (
            str(options.assistant_write_password_file),
            [
                *assistant_role_sql(ASSISTANT_WRITE_ROLE, ":'pw'", writes=True),
                f"GRANT CREATE ON SCHEMA public TO {quote_ident(ASSISTANT_WRITE_ROLE)}",
            ],
        ),
    ]


def _run_entrypoint(
    model: Model, service: str, tmp_path: Path, *, initialised: bool
) -> tuple[list[str], dict[str, str]]:
    """Run ``service``'s entrypoint with its environment, up to the image's entrypoint.

    Its files go under ``tmp_path`` (PGDATA, the hba file, the init scripts), and a stand-in
    docker-entrypoint.sh records its arguments. ``initialised``: PGDATA holds a database (a
    replica's would otherwise be cloned). Returns those arguments and the init scripts.
    """
    shell, flag, script = model["services"][service]["entrypoint"]
    initdb, bin_dir, pgdata = tmp_path / "initdb.d", tmp_path / "bin", tmp_path / "data"
    argv_file = tmp_path / "argv"
    initdb.mkdir()
    bin_dir.mkdir()
    if initialised:
        pgdata.mkdir()
        (pgdata / "PG_VERSION").write_text("15\n")
    script = script.replace("/etc/pgwarden_hba.conf", str(tmp_path / "pgwarden_hba.conf"))
    script = script.replace(INITDB_DIR, f"{initdb}/")
    # Nothing outside tmp_path may be written: the tests may run as root.
    assert "/etc/" not in script
    assert INITDB_DIR.rstrip("/") not in script
    stand_in = bin_dir / "docker-entrypoint.sh"
    stand_in.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {shlex.quote(str(argv_file))}\n")
    stand_in.chmod(0o755)
    environment = model["services"][service]["environment"]
    result = subprocess.run(
        [shell, flag, script],
        env={**environment, "PGDATA": str(pgdata), "PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    scripts = {path.name: path.read_text() for path in initdb.iterdir()}
    return argv_file.read_text().split("\0")[:-1], scripts


@pytest.mark.parametrize(
    ("service", "initialised", "writes"),
    [
        ("pg-primary", False, True),
        ("pg-primary", True, False),
        ("pg-replica1", True, False),
        ("pg-replica2", True, False),
    ],
    ids=["new primary", "primary", "replica1", "replica2"],
)
def test_only_a_primary_being_initialised_writes_the_init_script(
    model: Model, tmp_path: Path, service: str, initialised: bool, writes: bool
) -> None:
    _, scripts = _run_entrypoint(model, service, tmp_path, initialised=initialised)

    path, script = _initdb_script(model)
    assert scripts == ({Path(path).name: script} if writes else {})


def test_each_managed_node_runs_with_its_endpoint_name_as_cluster_name(
    model: Model, tmp_path: Path
) -> None:
    # A replica streams under its cluster_name (pg_basebackup's primary_conninfo names no
    # application_name), and pgwarden promotes only one streaming under its endpoint name.
    options = _register_cluster_options(model)
    assert {endpoint.host for endpoint in options.endpoints} == MANAGED_NODES
    for endpoint in options.endpoints:
        (tmp_path / endpoint.name).mkdir()
        argv, _ = _run_entrypoint(model, endpoint.host, tmp_path / endpoint.name, initialised=True)

        assert argv[0] == "postgres"
        flags = argv[1:]
        assert flags[::2] == ["-c"] * (len(flags) // 2)
        postgres_settings = dict(flag.split("=", 1) for flag in flags[1::2])
        assert postgres_settings["cluster_name"] == endpoint.name, endpoint.host


def test_compose_defaults_are_project_env_defaults(tmp_path: Path) -> None:
    """Left out of .env, each variable a pgwarden service gets means what env.py's default does."""
    env_file = tmp_path / "required-only.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in filled_in().items()))
    result = run_compose(env_file, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout.replace("$$", "$"))
    result = run_compose(env_file, "config", "--variables", "--format", "json")
    assert result.returncode == 0, result.stderr
    optional = {
        name for name, variable in json.loads(result.stdout).items() if not variable["Required"]
    }

    checked: set[str] = set()
    for service in PGWARDEN_SERVICES:
        for name, value in model["services"][service]["environment"].items():
            if name in optional:
                variable = VARIABLES[name]
                assert variable.default is not None, name
                assert variable.parse(value) == variable.parse(variable.default), (service, name)
                checked.add(name)
    # Every setting compose passes with a default, the MCP server's limits among them.
    assert {name for name in VARIABLES if name.startswith("PGWARDEN_MCP_")} <= checked
    assert "PGWARDEN_HTTPS" in checked


def test_pgwarden_services_pass_every_setting_but_a_few_fixed_ones(model: Model) -> None:
    # Left at env.py's defaults on purpose: no debug pages, Redis as the broker; the admin's
    # are for `init` alone, which creates it.
    fixed = {"DEBUG", "CELERY_BROKER_URL"}
    admin = {"PGWARDEN_ADMIN_USER", "PGWARDEN_ADMIN_PASSWORD"}
    for name in PGWARDEN_SERVICES:
        environment = set(model["services"][name]["environment"])
        assert set(VARIABLES) - environment - admin == fixed, name
        assert (admin <= environment) == (name == "init"), name
