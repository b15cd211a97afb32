"""Endpoint passwords: encrypted at rest, masked everywhere they could be shown.

Passwords are encrypted with ``MultiFernet`` over ``PGWARDEN_ENCRYPTION_KEYS``
(newest key first), so keys rotate without downtime: add a key in front,
re-encrypt with ``manage.py rotate_encryption_keys``, then drop the old key.

Plaintext lives only inside :class:`Secret`, whose ``repr``/``str`` are masked.

This module is pure (no Django): the keys come from a provider the app installs at
start-up (:func:`use_keys_from`, called by ``EndpointsConfig.ready`` with a function
reading the settings, so ``override_settings`` in tests is seen at once).

Two ways to scrub text, for two audiences:

- :func:`redact` is for text anyone may see (tool answers, errors, the admin): it masks
  passwords inside connection strings (``password=...``, ``scheme://user:password@``) and
  the secrets the caller names, never by searching for every password the process knows.
  A search like that is an oracle: PostgreSQL echoes invalid input back
  (``SELECT 'guess'::int``), so a mask appearing exactly where a guess is right would tell
  the guesser which one is a password.
- :func:`redact_known` is for the process's own logs, which only operators read: it also
  masks every plaintext this process has decrypted (remembered by :class:`Secret`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

MASK = "********"

# Shorter strings are too common to scrub from text without mangling it.
_MIN_REDACT_LENGTH = 4
_known_plaintexts: set[str] = set()
_known_lock = threading.Lock()


class DecryptionError(Exception):
    """A stored password cannot be decrypted with any configured key."""


class Secret:
    """A plaintext that never shows itself by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        remember(value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})" if self._value else "Secret('')"

    __str__ = __repr__

    def __reduce__(self) -> tuple:
        # Pickling (Celery, caches) would carry the plaintext somewhere unencrypted.
        raise TypeError("Secret values cannot be pickled")


@lru_cache(maxsize=4)
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


_keys_provider: Callable[[], Sequence[str]] | None = None


def use_keys_from(provider: Callable[[], Sequence[str]]) -> None:
    """Read the Fernet keys (newest first) from ``provider`` on every encrypt/decrypt."""
    global _keys_provider
    _keys_provider = provider


def _current() -> MultiFernet:
    if _keys_provider is None:
        raise RuntimeError(
            "no encryption keys configured: endpoints.core.crypto.use_keys_from() is called "
            "when the Django app starts (EndpointsConfig.ready)"
        )
    return _multifernet(tuple(_keys_provider()))


def encrypt(plaintext: str) -> str:
    """Encrypt with the newest key; the token is safe to store."""
    remember(plaintext)
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> Secret:
    try:
        return Secret(_current().decrypt(token.encode()).decode())
    except InvalidToken:
        raise DecryptionError(
            "the stored password cannot be decrypted with any key in PGWARDEN_ENCRYPTION_KEYS; "
            "restore the key it was encrypted with, or set the password again"
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt ``token`` with the newest key."""
    try:
        return _current().rotate(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "a stored password cannot be decrypted with any key in PGWARDEN_ENCRYPTION_KEYS"
        ) from None


def remember(plaintext: str) -> None:
    if len(plaintext) >= _MIN_REDACT_LENGTH:
        with _known_lock:
            _known_plaintexts.add(plaintext)


# password=secret, password = 'it''s', PGPASSWORD=x: libpq's keyword/value form (quoted values
# may hold spaces, \' and ''), and environment assignments.
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.|'')*'|[^\s'\"]+)", re.IGNORECASE)
# scheme://user:secret@host (PostgreSQL, Redis, SMTP URLs...).
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^\s:/@]*:)([^\s@/]*)(@)", re.IGNORECASE)


def mask_conninfo(text: str) -> str:
    """``text`` with the passwords of every connection string in it masked."""
    if "assword" not in text and "ASSWORD" not in text and "://" not in text:
        return text  # the usual case, kept cheap
    text = _KEYWORD_PASSWORD.sub(lambda match: match.group(1) + MASK, text)
    return _URL_PASSWORD.sub(lambda match: match.group(1) + MASK + match.group(3), text)


def redact(text: str, *secrets: str) -> str:
    """``text`` with connection-string passwords and the given ``secrets`` masked.

    Only what the caller names is searched for (see the module docstring): never pass a
    secret the reader of ``text`` could guess at by putting guesses into it.
    """
    text = mask_conninfo(text)
    wanted = [secret for secret in secrets if len(secret) >= _MIN_REDACT_LENGTH]
    return _mask(text, wanted)


def redact_known(text: str) -> str:
    """For logs only: :func:`redact` plus every plaintext this process has decrypted."""
    with _known_lock:
        secrets = [*_known_plaintexts]
    return _mask(mask_conninfo(text), secrets)


def _mask(text: str, secrets: list[str]) -> str:
    # Longest first, so a password containing another one is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactSecretsFilter(logging.Filter):
    """Logging filter: scrub known passwords from messages and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_known(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_known(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_known(record.exc_text)
        return True
