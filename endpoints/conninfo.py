"""How pgwarden connects to an endpoint: one builder, one masked display."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from endpoints.crypto import MASK, Secret

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
        if self.statement_timeout_ms:
            kwargs["options"] = f"-c statement_timeout={int(self.statement_timeout_ms)}"
        return kwargs

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
