"""Endpoint passwords: encrypted at rest, masked everywhere they could be shown.

Passwords are encrypted with ``MultiFernet`` over ``PGWARDEN_ENCRYPTION_KEYS``
(newest key first), so keys rotate without downtime: add a key in front,
re-encrypt with ``manage.py rotate_encryption_keys``, then drop the old key.

Plaintext lives only inside :class:`Secret`, whose ``repr``/``str`` are masked,
and every plaintext this process decrypts is remembered so the logging filter
and :func:`redact` can scrub it from log lines and error messages.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

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


def _current() -> MultiFernet:
    return _multifernet(tuple(settings.PGWARDEN_ENCRYPTION_KEYS))


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


def redact(text: str, *extra: str) -> str:
    """Replace every known plaintext (and ``extra`` ones) in ``text`` with a mask."""
    with _known_lock:
        secrets = [*_known_plaintexts]
    secrets.extend(value for value in extra if len(value) >= _MIN_REDACT_LENGTH)
    # Longest first, so a password containing another one is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactSecretsFilter(logging.Filter):
    """Logging filter: scrub known passwords from messages and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
