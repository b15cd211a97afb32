"""``manage.py register_cluster``: create or refresh a cluster and its endpoints, idempotently.

    manage.py register_cluster NAME --endpoint NAME=ROLE@HOST[:PORT] [--endpoint ...]
        [--dbname DB] [--user USER] [--sslmode MODE] [--sslrootcert PATH] [--zone ZONE]
        [--password-file PATH | --password-stdin] [--description TEXT]
        [--assistant-user ROLE --assistant-password-file PATH]
        [--assistant-write-user ROLE --assistant-write-password-file PATH]

What docker-compose.yml and scripts run. The password comes from a file or
standard input, never from the command line, where every user of the machine
can read it (ps, /proc). Options left out keep what the registry holds (see
:mod:`endpoints.services.registration`), so running the same command again changes nothing.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from endpoints.core.crypto import Secret
from endpoints.core.vocabulary import values
from endpoints.models import Role, SslMode, validate_host
from endpoints.services.registration import EndpointSpec, RoleSpec, register_cluster

DEFAULT_PORT = 5432
ENDPOINT_SYNTAX = "NAME=ROLE@HOST[:PORT]"
_ENDPOINT_RE = re.compile(r"^(?P<name>[^=]*)=(?P<role>[^@]*)@(?P<address>.*)$")
_SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]{1,63}$")


@dataclass(frozen=True)
class EndpointArg:
    """One parsed ``--endpoint``: where a server is and the role it starts with."""

    name: str
    role: str
    host: str
    port: int


def parse_endpoint(text: str) -> EndpointArg:
    """Parse ``NAME=ROLE@HOST[:PORT]``; IPv6 addresses go in brackets: ``[::1]:5432``."""
    match = _ENDPOINT_RE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {ENDPOINT_SYNTAX}, e.g. pg1=primary@db1.example.com:5432"
        )
    name, role, address = match["name"], match["role"], match["address"]
    if not _SLUG_RE.match(name):
        raise argparse.ArgumentTypeError(
            f"endpoint name {name!r} must be 1-63 letters, digits, hyphens or underscores"
        )
    if role not in values(Role):
        raise argparse.ArgumentTypeError(
            f"endpoint {name!r}: role {role!r} is not one of {', '.join(values(Role))}"
        )
    host, port = _parse_address(name, address)
    return EndpointArg(name=name, role=role, host=host, port=port)


def _parse_address(name: str, address: str) -> tuple[str, int]:
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket:
            raise argparse.ArgumentTypeError(f"endpoint {name!r}: {address!r} lacks a closing ]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"endpoint {name!r}: {host!r} in brackets is not an IPv6 address"
            ) from None
        if rest and not rest.startswith(":"):
            raise argparse.ArgumentTypeError(
                f"endpoint {name!r}: expected :PORT after [{host}], not {rest!r}"
            )
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_or_empty = address.partition(":")
        if ":" in port_text_or_empty:
            raise argparse.ArgumentTypeError(
                f"endpoint {name!r}: write an IPv6 address in brackets, e.g. [::1]:5432"
            )
        port_text = port_text_or_empty if colon else None
        if not _valid_host(host):
            raise argparse.ArgumentTypeError(
                f"endpoint {name!r}: {host!r} is not a host name or IP address"
            )
    return host, _parse_port(name, port_text)


def _valid_host(host: str) -> bool:
    try:
        validate_host(host)
    except ValidationError:
        return False
    return True


def _parse_port(name: str, text: str | None) -> int:
    if text is None:
        return DEFAULT_PORT
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"endpoint {name!r}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"endpoint {name!r}: port {port} is not between 1 and 65535"
        )
    return port


class EndpointsAction(argparse.Action):
    """Collects ``--endpoint`` values; rejects a repeated name or a second primary at once."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        collected: list[EndpointArg] = list(getattr(namespace, self.dest, None) or [])
        endpoint: EndpointArg = values
        if any(other.name == endpoint.name for other in collected):
            raise argparse.ArgumentError(self, f"endpoint {endpoint.name!r} is given twice")
        if endpoint.role == Role.PRIMARY:
            for other in collected:
                if other.role == Role.PRIMARY:
                    raise argparse.ArgumentError(
                        self,
                        f"both {other.name!r} and {endpoint.name!r} are given as primary; "
                        "a cluster has one",
                    )
        collected.append(endpoint)
        setattr(namespace, self.dest, collected)


class RefusePasswordArgument(argparse.Action):
    """``--password`` exists only to explain why there is none; the value is never echoed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        raise argparse.ArgumentError(
            self,
            "passwords are not taken on the command line, where other users can read them; "
            "use --password-file PATH or --password-stdin",
        )


class Command(BaseCommand):
    help = (
        "Create or refresh a cluster and its endpoints in the registry; running it again "
        "changes nothing. Existing endpoints keep their role, weight and enabled flag, and "
        "every option left out keeps its stored value."
    )
    # Lets tests and callers hand in a stream, as Django's createsuperuser does.
    stealth_options = ("stdin",)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # Scripts spell options out: an abbreviation accepted today turns ambiguous, or
        # means something else, once another option is added.
        return super().create_parser(prog_name, subcommand, allow_abbrev=False, **kwargs)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="Cluster name: letters, digits, hyphens, underscores.")
        parser.add_argument(
            "--endpoint",
            dest="endpoints",
            action=EndpointsAction,
            type=parse_endpoint,
            required=True,
            metavar=ENDPOINT_SYNTAX,
            help="An endpoint, repeatable: e.g. pg1=primary@db1:5432 pg2=replica@[fd00::2]:5432. "
            f"ROLE is {' or '.join(values(Role))} and applies only when the endpoint is created; "
            f"PORT defaults to {DEFAULT_PORT}.",
        )
        parser.add_argument("--dbname", help="Database to connect to (new endpoints: postgres).")
        parser.add_argument("--user", help="User to connect as (new endpoints: postgres).")
        parser.add_argument(
            "--sslmode",
            choices=list(values(SslMode)),
            help="libpq sslmode (new endpoints: prefer).",
        )
        parser.add_argument(
            "--sslrootcert",
            metavar="PATH",
            help="CA certificate on the pgwarden hosts, for verify-ca and verify-full.",
        )
        parser.add_argument("--zone", help="Location label, e.g. eu-west-1a.")
        parser.add_argument("--description", help="Description of the cluster.")
        password = parser.add_mutually_exclusive_group()
        password.add_argument(
            "--password-file",
            type=Path,
            metavar="PATH",
            help="Read the password from this file (trailing newlines are dropped), e.g. a "
            "Docker secret in /run/secrets/.",
        )
        password.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from standard input (prompts when it is a terminal).",
        )
        parser.add_argument(
            "--password", nargs="?", action=RefusePasswordArgument, help=argparse.SUPPRESS
        )
        for kind, what in (("assistant", "read"), ("assistant-write", "write")):
            parser.add_argument(
                f"--{kind}-user",
                metavar="ROLE",
                help=f"The role the MCP server's {what} tools connect as (least privilege: "
                "see the README's MCP section); an empty value removes it.",
            )
            parser.add_argument(
                f"--{kind}-password-file",
                type=Path,
                metavar="PATH",
                help=f"Read the --{kind}-user role's password from this file.",
            )

    def handle(self, *args: Any, **options: Any) -> None:
        password = self._read_password(options)
        endpoints: Sequence[EndpointArg] = options["endpoints"]
        specs = [
            EndpointSpec(
                name=endpoint.name,
                host=endpoint.host,
                port=endpoint.port,
                role=endpoint.role,
                dbname=options["dbname"],
                user=options["user"],
                password=password,
                sslmode=options["sslmode"],
                sslrootcert=options["sslrootcert"],
                zone=options["zone"],
            )
            for endpoint in endpoints
        ]
        name: str = options["name"]
        assistant = self._role(options, "assistant")
        assistant_write = self._role(options, "assistant_write")
        try:
            registration = register_cluster(
                name,
                specs,
                description=options["description"],
                assistant=assistant,
                assistant_write=assistant_write,
            )
        except ValidationError as exc:
            raise CommandError(describe_validation_error(name, exc)) from None
        self.stdout.write(registration.summary())

    def _role(self, options: dict[str, Any], kind: str) -> RoleSpec | None:
        """``--KIND-user`` and its password file as a RoleSpec; None when neither is given."""
        user: str | None = options[f"{kind}_user"]
        path: Path | None = options[f"{kind}_password_file"]
        option = kind.replace("_", "-")
        if user is None:
            if path is not None:
                raise CommandError(f"--{option}-password-file needs --{option}-user")
            return None
        if user and not _ROLE_RE.match(user):
            raise CommandError(
                f"--{option}-user {user!r} is not a role name (letters, digits, _ and $, "
                "at most 63 characters)"
            )
        password = _password_from_file(path, f"--{option}-password-file") if path else None
        return RoleSpec(user, password)

    def _read_password(self, options: dict[str, Any]) -> Secret | None:
        path: Path | None = options["password_file"]
        if path is not None:
            source = f"password file {path}"
            raw = _read_file(path, source)
        elif options["password_stdin"]:
            source = "password on standard input"
            stream: IO[str] = options.get("stdin") or sys.stdin
            raw = getpass.getpass("Password: ") if stream.isatty() else stream.read()
        else:
            return None
        return _one_line_password(raw, source)


# Role names pgwarden registers: PostgreSQL's unquoted identifiers (quoted ones may hold
# anything, but a name that needs quoting is a typo far more often than a wish).
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _read_file(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        # strerror, not str(exc): the reason without repeating the path.
        raise CommandError(f"cannot read the {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"the {source} is not UTF-8 text") from None


def _password_from_file(path: Path, option: str) -> Secret:
    source = f"{option} {path}"
    return _one_line_password(_read_file(path, source), source)


def _one_line_password(raw: str, source: str) -> Secret:
    # Like the postgres image's *_FILE variables: trailing newlines are not part of it.
    password = raw.rstrip("\r\n")
    if not password:
        raise CommandError(f"the {source} is empty")
    if "\n" in password or "\r" in password:
        raise CommandError(f"the {source} spans several lines; give the password alone")
    return Secret(password)


def describe_validation_error(name: str, exc: ValidationError) -> str:
    """One line per field, under a heading that says nothing was written."""
    lines = [f"cluster {name!r} was not registered (nothing was changed):"]
    if hasattr(exc, "error_dict"):
        for subject, messages in exc.message_dict.items():
            lines.extend(f"  {subject}: {message}" for message in messages)
    else:
        lines.extend(f"  {message}" for message in exc.messages)
    return "\n".join(lines)
