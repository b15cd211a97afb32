"""Field validators and database checks shared by the registry's models.

Contract: each validator raises :class:`django.core.exceptions.ValidationError` with a
message an operator can act on; each ``*_positive`` helper has a matching database check
(:func:`all_positive`) so a write that bypasses forms cannot store what a form refuses.
Imported by :mod:`endpoints.models` (which re-exports ``validate_host`` and
``GreaterThanValidator``: migrations name them there).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import BaseValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.deconstruct import deconstructible


def positive(name: str) -> list[MinValueValidator]:
    """``value >= 1``, for integer counts and timeouts."""
    return [MinValueValidator(1, message=f"{name} must be greater than 0.")]


# The path migrations record: the class lived in endpoints.models, which re-exports it.
@deconstructible(path="endpoints.models.GreaterThanValidator")
class GreaterThanValidator(BaseValidator):
    """``value > limit``: MinValueValidator is inclusive, and a 0 s timeout is no timeout."""

    message = "Ensure this value is greater than %(limit_value)s."
    code = "min_value"

    def compare(self, a: Any, b: Any) -> bool:
        return bool(a <= b)


def positive_float(name: str) -> list[GreaterThanValidator]:
    """``value > 0``, for durations in seconds or milliseconds."""
    return [GreaterThanValidator(0, message=f"{name} must be greater than 0.")]


def all_positive(prefix: str, *fields: str) -> list[models.CheckConstraint]:
    """Database checks behind the validators, for writes that bypass forms."""
    return [
        models.CheckConstraint(condition=Q(**{f"{field}__gt": 0}), name=f"{prefix}_{field}_gt_0")
        for field in fields
    ]


# A host name (RFC 1123 labels; underscores too, as container names have them) or an IP
# address. No Unix-socket paths (libpq reads a host starting with "/" as a socket
# directory) and no comma lists (libpq tries each host in turn): one endpoint, one server.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_MAX_HOST_NAME_CHARS = 253


def validate_host(value: str) -> None:
    """A single host name or IP address; anything libpq would read differently is refused."""
    text = value if isinstance(value, str) else ""
    if text != text.strip() or not text:
        raise ValidationError("Give a host name or an IP address, without spaces.", code="host")
    try:
        ipaddress.ip_address(text)
        return
    except ValueError:
        pass
    if "/" in text or "," in text:
        raise ValidationError(
            "Give one host name or IP address: no Unix-socket path (a host starting with /) "
            "and no comma-separated list.",
            code="host",
        )
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    if len(name) > _MAX_HOST_NAME_CHARS or not all(_HOST_LABEL.fullmatch(lb) for lb in labels):
        raise ValidationError(
            f"{text!r} is neither a host name (letters, digits, hyphens, dots) nor an IP address.",
            code="host",
        )
