"""How pgwarden connects to an endpoint: one builder, one masked display."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from endpoints.core.crypto import MASK, Secret, decrypt

APPLICATION_NAME = "pgwarden"


@dataclass(frozen=True)
class ConnectionInfo:
    host: str
    port: int
    dbname: str
    user: str
    password: Secret = field(default_factory=lambda: Secret(""))
    sslmode: str = "prefer"
    sslrootcert: str = ""
    connect_timeout_s: int = 5
    statement_timeout_ms: int | None = None
    application_name: str = APPLICATION_NAME
    # Settings the session starts with (the start-up packet's options), after the timeout.
    settings: tuple[tuple[str, str], ...] = ()
    # libpq's require_auth: the authentication methods the server may ask for. With
    # "scram-sha-256" a server that asks for the password in clear (or md5) gets nothing:
    # SCRAM never sends the password, and proves the server holds its verifier.
    require_auth: str = ""

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (holds the plaintext: never log it)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout_s,
            "application_name": self.application_name,
        }
        if self.password:
            kwargs["password"] = self.password.reveal()
        if self.sslrootcert:
            kwargs["sslrootcert"] = self.sslrootcert
        if self.require_auth:
            kwargs["require_auth"] = self.require_auth
        options = self._options()
        if options:
            kwargs["options"] = options
        return kwargs

    def _options(self) -> str:
        """libpq's ``options``: ``-c name=value`` each, spaces and backslashes escaped."""
        settings = list(self.settings)
        if self.statement_timeout_ms and not any(n == "statement_timeout" for n, _ in settings):
            settings.insert(0, ("statement_timeout", str(int(self.statement_timeout_ms))))
        return " ".join(f"-c {name}={_escape_option(value)}" for name, value in settings)

    def masked(self) -> str:
        """A URL for display: everything but the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        secret = f":{MASK}" if self.password else ""
        url = f"postgresql://{quote(self.user)}{secret}@{host}:{self.port}/{quote(self.dbname)}"
        query = f"?sslmode={self.sslmode}"
        if self.sslrootcert:
            query += f"&sslrootcert={quote(self.sslrootcert)}"
        return url + query

    def __repr__(self) -> str:
        return f"ConnectionInfo({self.masked()})"

    __str__ = masked


def _escape_option(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


@dataclass(frozen=True)
class StoredRole:
    """A database role's name and its encrypted password: what a purpose connects with."""

    user: str
    password_encrypted: str = field(default="", repr=False)

    def password(self) -> Secret:
        """The plaintext, masked; raises ``crypto.DecryptionError``."""
        if not self.password_encrypted:
            return Secret("")
        return decrypt(self.password_encrypted)
