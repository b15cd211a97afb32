"""Every environment variable pgwarden reads, in one place.

Settings read configuration only through :func:`read`, so a missing or
malformed value stops start-up with a message that names the variable and
shows a valid example. The same table generates the documentation in
``.env.example`` and lets tests check that ``docker-compose.yml`` sets no
variable that nothing reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import validate_email

BASE_DIR = Path(__file__).resolve().parent.parent

_MISSING = object()


class InvalidValue(ValueError):
    """A parser's complaint about a value; the caller adds the variable name."""


@dataclass(frozen=True)
class Variable:
    name: str
    help: str
    example: str
    parse: Callable[[str], Any]
    default: str | None = None  # None: required
    # Never echoed in error messages: keys, passwords, and URLs that may embed a password.
    secret: bool = False


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise InvalidValue("is not a boolean (use true or false)")


def parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_origins(raw: str) -> list[str]:
    origins = parse_list(raw)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise InvalidValue(f"has {origin!r}, which is not an origin such as https://host")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise InvalidValue(f"has {origin!r}: an origin has no path (https://host[:port])")
    return origins


def parse_secret_key(raw: str) -> str:
    if len(raw) < 32:
        raise InvalidValue("is shorter than 32 characters")
    return raw


def _split_url(raw: str) -> SplitResult:
    """``urlsplit`` with its port checked; errors never quote the URL, which may hold a password.

    (urllib's own messages do: an unencoded ``/`` or ``?`` in a password ends the host part
    early, and "Port could not be cast to integer value as '<password>'" follows.)
    """
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InvalidValue(
            "is not a valid URL: check the host and port, and percent-encode special "
            "characters (/ ? # @ [ ] :) in the user name and password"
        ) from None
    return parts


# Seconds libpq waits to connect to a PostgreSQL control database.
CONTROL_DB_CONNECT_TIMEOUT_S = 5


def parse_database_url(raw: str) -> dict[str, Any]:
    scheme = _split_url(raw).scheme
    if scheme not in {"sqlite", "postgres", "postgresql", "pgsql"}:
        raise InvalidValue(f"has scheme {scheme or '(none)'!r}; use sqlite:// or postgres://")
    try:
        config = environ.Env.db_url_config(raw)
    except (ValueError, KeyError, ImproperlyConfigured):
        # The parser's message may quote parts of the URL, password included.
        raise InvalidValue("cannot be parsed as a database URL") from None
    name = config.get("NAME")
    if not name:
        raise InvalidValue("names no database")
    if config["ENGINE"].endswith("sqlite3") and name != ":memory:" and not Path(name).is_absolute():
        # Relative SQLite paths are relative to the project, not to the current directory.
        config["NAME"] = str(BASE_DIR / name)
    if config["ENGINE"].endswith("postgresql"):
        # libpq waits for an unreachable host as long as the OS lets it (minutes): every
        # request, /readyz and each Celery task would hang with it. ?connect_timeout= wins.
        options = config.setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", CONTROL_DB_CONNECT_TIMEOUT_S)
    return config


def parse_redis_url(raw: str) -> str:
    parts = _split_url(raw)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise InvalidValue(f"has scheme {parts.scheme or '(none)'!r}; use redis:// or rediss://")
    if parts.scheme != "unix" and not parts.hostname:
        raise InvalidValue("names no host")
    return raw


def parse_encryption_keys(raw: str) -> list[str]:
    keys = parse_list(raw)
    if not keys:
        raise InvalidValue("is empty")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # Never echo the key itself: it is a secret even when malformed.
            raise InvalidValue(
                f"key #{position} is not a valid Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    return keys


def parse_webhook_url(raw: str) -> str:
    parts = _split_url(raw.strip())
    if parts.scheme not in {"http", "https"}:
        raise InvalidValue(f"has scheme {parts.scheme or '(none)'!r}; use http:// or https://")
    if not parts.hostname:
        raise InvalidValue("names no host")
    return raw.strip()


def parse_email_address(raw: str) -> str:
    address = raw.strip()
    try:
        validate_email(address)
    except ValidationError:
        raise InvalidValue(f"has {address!r}, which is not an email address") from None
    return address


def parse_email_addresses(raw: str) -> list[str]:
    return [parse_email_address(item) for item in parse_list(raw)]


def parse_email_url(raw: str) -> dict[str, Any]:
    """Django's EMAIL_* settings from a URL such as ``smtp+tls://user:password@host:587``."""
    parts = _split_url(raw.strip())
    if parts.scheme not in environ.Env.EMAIL_SCHEMES:
        schemes = ", ".join(f"{scheme}://" for scheme in sorted(environ.Env.EMAIL_SCHEMES))
        raise InvalidValue(f"has scheme {parts.scheme or '(none)'!r}; use one of {schemes}")
    if parts.scheme.startswith("smtp") and not parts.hostname:
        raise InvalidValue("names no mail server host")
    try:
        config = environ.Env.email_url_config(raw.strip())
    except (ValueError, ImproperlyConfigured):
        # The parser's message may quote parts of the URL, password included.
        raise InvalidValue("cannot be parsed as an email URL") from None
    return {
        "EMAIL_BACKEND": config["EMAIL_BACKEND"],
        "EMAIL_HOST": config["EMAIL_HOST"] or "localhost",
        "EMAIL_PORT": config["EMAIL_PORT"] or 25,
        "EMAIL_HOST_USER": config["EMAIL_HOST_USER"] or "",
        "EMAIL_HOST_PASSWORD": config["EMAIL_HOST_PASSWORD"] or "",
        "EMAIL_USE_TLS": bool(config.get("EMAIL_USE_TLS", False)),
        "EMAIL_USE_SSL": bool(config.get("EMAIL_USE_SSL", False)),
        "EMAIL_FILE_PATH": config["EMAIL_FILE_PATH"] or None,
    }


def parse_positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidValue("is not an integer") from None
    if value <= 0:
        raise InvalidValue("is not a positive integer")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """A parser of whole numbers from ``low`` to ``high`` (both allowed); ``low`` is positive."""

    def parse_int_between(raw: str) -> int:
        value = parse_positive_int(raw)
        if not low <= value <= high:
            side = "under the minimum" if value < low else "over the maximum"
            raise InvalidValue(f"is {side}: use a whole number from {low} to {high}")
        return value

    return parse_int_between


_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MIN_TOKEN_LENGTH = 16


def parse_bearer_token(raw: str) -> str:
    """Blank: no token. Otherwise an RFC 6750 token (what fits in ``Bearer <token>``)."""
    token = raw.strip()
    if not token:
        return ""
    if not _BEARER_TOKEN.fullmatch(token):
        raise InvalidValue(
            "has characters a bearer token cannot carry: use letters, digits and - . _ ~ + /"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidValue(f"is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


def parse_log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise InvalidValue("is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def parse_time_zone(raw: str) -> str:
    # Django itself would stop with a bare ValueError that names no variable.
    name = raw.strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValue("is not a known time zone (an IANA name such as Europe/Paris)") from None
    return name


def parse_env_file(raw: str) -> Path | None:
    """Blank: no file. A relative path is relative to the project directory."""
    value = raw.strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else BASE_DIR / path


def _text(raw: str) -> str:
    return raw


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Blank means "not set" (None); anything else must parse."""

    def parse_optional(raw: str) -> Any:
        return None if not raw.strip() else parse(raw)

    return parse_optional


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in [
        Variable(
            "PGWARDEN_ENV_FILE",
            "The dotenv file read at start-up, if it exists; variables already in the "
            "environment win over it. Relative to the project directory; blank reads no file. "
            "Only the process environment sets this one: in the file itself it has no effect.",
            "/etc/pgwarden/pgwarden.env",
            parse_env_file,
            default=".env",
        ),
        Variable(
            "SECRET_KEY",
            "Django's signing key (sessions, CSRF). Long and random; keep it private.",
            "ZG9udC11c2UtdGhpcy1leGFtcGxlLWdlbmVyYXRlLXlvdXItb3duLWtleQ",
            parse_secret_key,
            secret=True,
        ),
        Variable(
            "DEBUG",
            "Django debug pages. Never true in production.",
            "false",
            parse_bool,
            default="false",
        ),
        Variable(
            "ALLOWED_HOSTS",
            "Comma-separated host names the web server answers to.",
            "127.0.0.1,localhost,pgwarden.example.com",
            parse_list,
            default="127.0.0.1,localhost",
        ),
        Variable(
            "PGWARDEN_HTTPS",
            "The web server is reached over HTTPS, through a proxy that terminates TLS and "
            "sets X-Forwarded-Proto on every request (replacing any a client sent): true makes "
            "session and CSRF cookies Secure, sends HSTS (one year), and trusts that header. "
            "Never true when browsers reach the admin over plain HTTP: they would not send "
            "the Secure cookies back, so logging in would fail.",
            "true",
            parse_bool,
            default="false",
        ),
        Variable(
            "CSRF_TRUSTED_ORIGINS",
            "Comma-separated origins allowed to POST to the admin when it sits behind a proxy.",
            "https://pgwarden.example.com",
            parse_origins,
            default="",
        ),
        Variable(
            "DATABASE_URL",
            "The control-plane database (pgwarden's own registry). SQLite is the first-run "
            "default; use PostgreSQL in production.",
            "postgres://pgwarden:secret@127.0.0.1:5432/pgwarden",
            parse_database_url,
            default="sqlite:///var/pgwarden.sqlite3",
            secret=True,
        ),
        Variable(
            "REDIS_URL",
            "Redis used for topology change notices and locks; also the Celery broker unless "
            "CELERY_BROKER_URL is set.",
            "redis://127.0.0.1:6379/0",
            parse_redis_url,
            default="redis://127.0.0.1:6379/0",
            secret=True,
        ),
        Variable(
            "CELERY_BROKER_URL",
            "Celery broker; defaults to REDIS_URL.",
            "redis://127.0.0.1:6379/1",
            optional(parse_redis_url),
            default="",
            secret=True,
        ),
        Variable(
            "PGWARDEN_ENCRYPTION_KEYS",
            "Comma-separated Fernet keys that encrypt endpoint passwords, newest first. Add a "
            "new key in front, run `manage.py rotate_encryption_keys`, then drop the old one. "
            'Generate one with: python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())"',
            "8Jx3XJvO0cJmQ4sQeB1m9kqzC6V0m9l4o5y2PZb0Zx4=",
            parse_encryption_keys,
            secret=True,
        ),
        Variable(
            "TIME_ZONE",
            "Time zone for display in the admin; timestamps are stored in UTC.",
            "UTC",
            parse_time_zone,
            default="UTC",
        ),
        Variable(
            "LOG_LEVEL",
            "Level of pgwarden's own logs (written to stderr).",
            "INFO",
            parse_log_level,
            default="INFO",
        ),
        Variable(
            "PGWARDEN_ADMIN_USER",
            "Admin user that `make run` (manage.py ensure_admin) creates.",
            "admin",
            _text,
            default="admin",
        ),
        Variable(
            "PGWARDEN_ADMIN_PASSWORD",
            "Password for that admin user; when blank a random one is generated, stored in "
            "var/admin-password and printed at start-up.",
            "choose-a-long-password",
            _text,
            default="",
            secret=True,
        ),
        Variable(
            "PGWARDEN_HEALTH_RETENTION_DAYS",
            "Days of health-check history kept; an hourly task deletes older rows.",
            "7",
            parse_positive_int,
            default="7",
        ),
        Variable(
            "PGWARDEN_ALERT_WEBHOOK_URL",
            "When set, every alert raised or cleared is POSTed there as JSON (2 s timeout, "
            "failures logged). Blank: no webhook.",
            "https://hooks.example.com/pgwarden",
            optional(parse_webhook_url),
            default="",
            # Webhook URLs often carry their token in the path or query.
            secret=True,
        ),
        Variable(
            "PGWARDEN_ALERT_EMAILS",
            "Comma-separated addresses that receive every alert by email (Django's "
            "mail_admins, sent through EMAIL_URL). Blank: no email.",
            "dba@example.com,oncall@example.com",
            parse_email_addresses,
            default="",
        ),
        Variable(
            "PGWARDEN_ALERT_EMAIL_FROM",
            "Sender address of alert emails.",
            "pgwarden@example.com",
            parse_email_address,
            default="pgwarden@localhost",
        ),
        Variable(
            "PGWARDEN_MCP_CLUSTER",
            "The only cluster the MCP server (manage.py run_mcp) serves, as --cluster (which "
            "wins): its tools refuse any other and use it when they name none. Blank: every "
            "cluster.",
            "local",
            _text,
            default="",
        ),
        Variable(
            "PGWARDEN_MCP_ALLOW_WRITES",
            "Offer the MCP write tools (execute, transaction, EXPLAIN ANALYZE of writes) "
            "without --allow-writes.",
            "false",
            parse_bool,
            default="false",
        ),
        Variable(
            "PGWARDEN_MCP_ALLOW_ADMIN",
            "Offer the MCP admin tools (check_health, failover, add/remove/set endpoint) "
            "without --allow-admin.",
            "false",
            parse_bool,
            default="false",
        ),
        Variable(
            "PGWARDEN_MCP_MAX_CONCURRENT_QUERIES",
            "Assistant queries (MCP tools that reach a managed cluster) that one run_mcp "
            "process runs at once; more get a clear 'busy' error at once instead of waiting.",
            "4",
            parse_positive_int,
            default="4",
        ),
        Variable(
            "PGWARDEN_MCP_MAX_TIMEOUT_MS",
            "Largest statement timeout, in milliseconds, an assistant may ask for (timeout_ms "
            "of query, explain, execute, transaction); from 1000 to 3600000.",
            "60000",
            int_between(1_000, 3_600_000),
            default="60000",
        ),
        Variable(
            "PGWARDEN_MCP_LOCK_TIMEOUT_MS",
            "lock_timeout of every assistant statement, in milliseconds (at most 600000): an "
            "assistant's statement that waits longer for a lock fails instead of queueing "
            "every later statement behind it.",
            "2000",
            int_between(1, 600_000),
            default="2000",
        ),
        Variable(
            "PGWARDEN_METRICS_TOKEN",
            "When set, GET /metrics answers only requests with the header "
            "`Authorization: Bearer <token>` (401 otherwise); blank: /metrics is open. At "
            "least 16 characters; generate one with: openssl rand -hex 32",
            "8d3f0c4e9a1b7f2d6c5e4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
            parse_bearer_token,
            default="",
            secret=True,
        ),
        Variable(
            "EMAIL_URL",
            "How to send email: smtp://host:25, smtp+tls://user:password@host:587 "
            "(STARTTLS), smtp+ssl://user:password@host:465, or consolemail:// (print it).",
            "smtp+tls://alerts:secret@smtp.example.com:587",
            parse_email_url,
            default="smtp://localhost:25",
            secret=True,
        ),
    ]
}


def read(name: str) -> Any:
    """Parse variable ``name`` from the environment, or stop with a clear message."""
    variable = VARIABLES[name]
    raw = os.environ.get(name)
    if raw is None:
        if variable.default is None:
            raise ImproperlyConfigured(
                f"{name} is not set. {variable.help} Example: {name}={variable.example}"
            )
        raw = variable.default
    try:
        return variable.parse(raw)
    except InvalidValue as exc:
        shown = "the value" if variable.secret else f"{raw!r}"
        raise ImproperlyConfigured(
            f"{name} is malformed: {shown} {exc}. Example: {name}={variable.example}"
        ) from None


def load_dotenv(path: Path | None) -> None:
    """Read ``path`` if it exists; variables already in the environment win."""
    if path is not None and path.is_file():
        environ.Env.read_env(str(path), overwrite=False)


# The variables only docker-compose.yml interpolates: (name, comment lines, default);
# a default of None marks it required.
COMPOSE_ONLY_VARIABLES: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    (
        "MANAGED_PG_PASSWORD",
        (
            "Superuser password of the demo cluster compose runs (pg-primary, pg-replica1,",
            "pg-replica2); its containers and `register_cluster` get it as a secret file,",
            "never in their environment. Read when their volumes are first created.",
        ),
        None,
    ),
    (
        "MANAGED_ASSISTANT_PASSWORD",
        (
            "Password of pgwarden_assistant, the demo cluster's role for the MCP server's read",
            "tools (pg_read_all_data, never a superuser); pg-primary and `register_cluster`",
            "get it as a secret file. Read when pg-primary's volume is first created: to",
            "change it later, run ALTER ROLE ... PASSWORD there too.",
        ),
        None,
    ),
    (
        "MANAGED_ASSISTANT_WRITE_PASSWORD",
        (
            "Password of pgwarden_assistant_write, the role for the MCP write tools",
            "(pg_read_all_data, pg_write_all_data, CREATE in schema public); given and read",
            "as the one above.",
        ),
        None,
    ),
    (
        "CONTROL_DB_PASSWORD",
        (
            "Password of pgwarden's own database (service db). Letters and digits only:",
            "compose embeds it in DATABASE_URL. Read when the db volume is first created.",
        ),
        None,
    ),
    (
        "PGWARDEN_WEB_PORT",
        ("Port on 127.0.0.1 where the admin is published: http://127.0.0.1:8000/admin/",),
        "8000",
    ),
)


_ENV_EXAMPLE_HEADER = (
    "# pgwarden configuration. Copy to .env (or export the variables) and adjust.",
    "# `make run` writes a .env with fresh secrets on first run if there is none.",
    "# Generated by project/env.py (render_env_example): edit that, not this file.",
    "",
)
_COMPOSE_SECTION_HEADER = (
    "# " + "-" * 86,
    "# docker compose only: docker-compose.yml fills these in (from this file once copied",
    "# to .env, or from the shell); pgwarden itself never reads them. `docker compose up`",
    "# stops with a message naming any required variable that is missing. Compose also",
    "# requires SECRET_KEY, PGWARDEN_ENCRYPTION_KEYS and PGWARDEN_ADMIN_PASSWORD above;",
    "# without Python at hand, generate them with",
    "#   SECRET_KEY:                openssl rand -hex 32",
    "#   PGWARDEN_ENCRYPTION_KEYS:  openssl rand -base64 32 | tr '+/' '-_'",
    "#   the passwords:             openssl rand -hex 24",
    "# " + "-" * 86,
    "",
)


def render_env_example() -> str:
    """The text of ``.env.example``: every variable with its comment.

    A second section lists the variables only ``docker-compose.yml`` interpolates
    (pgwarden never reads them), so one file documents both; tests check that the
    compose file uses no other. Regenerate the file with ``python -c "from project.env
    import render_env_example as r; print(r(), end='')" > .env.example`` (one line).
    """
    lines = list(_ENV_EXAMPLE_HEADER)
    for variable in VARIABLES.values():
        lines += _entry(variable.name, [variable.help], variable.default, _shown_value(variable))
    lines += _COMPOSE_SECTION_HEADER
    for name, comment, default in COMPOSE_ONLY_VARIABLES:
        lines += _entry(name, comment, default, default or "")
    return "\n".join(lines)


def _shown_value(variable: Variable) -> str:
    """The value .env.example shows: the default, else a non-secret example, else blank."""
    if variable.default is None and not variable.secret:
        return variable.example
    return variable.default or ""


def _entry(name: str, comment: Sequence[str], default: str | None, value: str) -> list[str]:
    """One variable's lines: its comment, "Required." when it has no default, NAME=value."""
    lines = [f"# {line}" for line in comment]
    if default is None:
        lines.append("# Required.")
    return [*lines, f"{name}={value}", ""]
