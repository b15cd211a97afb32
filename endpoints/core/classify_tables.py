"""The classifier's function tables, read once at import from the data files beside this module.

Contract: every table holds lower-case, unqualified names, and the checks below match any
name in any case and any schema (``pg_catalog.NEXTVAL`` is ``nextval``).

``write_functions.txt``
    names whose call makes SQL a write (:data:`WRITE_FUNCTIONS`), and families of them:
    ``name*`` for every name starting with ``name`` (:data:`WRITE_FUNCTION_PREFIXES`),
    ``*name`` for every name ending with it (:data:`WRITE_FUNCTION_SUFFIXES`);
``readonly_functions.txt``
    the catalog's immutable and stable built-ins, generated as is;
``readonly_functions_extra.txt``
    built-ins known to be read-only that the catalog file does not list (volatile ones such
    as ``random``, newer ones such as ``any_value``); with the catalog's names, minus every
    write, they make :data:`READ_ONLY_FUNCTIONS`, what strict mode accepts;
``session_functions.txt``
    calls that leave state in the session (:data:`SESSION_FUNCTIONS`).

A line that is not such a name (upper case, spaces, punctuation) fails the import with the
file and line: a typo in a table must not silently change what is a write.
"""

from __future__ import annotations

import re
from pathlib import Path

_DATA_DIRECTORY = Path(__file__).parent
_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


def _data_lines(filename: str) -> list[str]:
    """The entries of one data file: stripped lines that are neither blank nor comments."""
    path = _DATA_DIRECTORY / filename
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _NAME.fullmatch(line.strip("*")) is None:
            raise ValueError(f"{path}:{number}: {line!r} is not a lower-case function name")
        entries.append(line)
    return entries


def load_names(filename: str) -> frozenset[str]:
    """The function names one data file lists (no families allowed)."""
    names = _data_lines(filename)
    families = [name for name in names if "*" in name]
    if families:
        raise ValueError(f"{filename}: families ({', '.join(families)}) are not allowed here")
    return frozenset(names)


def load_families(filename: str) -> tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]:
    """A data file's exact names, its ``name*`` prefixes and its ``*name`` suffixes."""
    names: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    for entry in _data_lines(filename):
        if entry.startswith("*") and entry.endswith("*"):
            raise ValueError(f"{filename}: {entry!r} may have '*' at one end only")
        if entry.endswith("*"):
            prefixes.append(entry.removesuffix("*"))
        elif entry.startswith("*"):
            suffixes.append(entry.removeprefix("*"))
        else:
            names.add(entry)
    return frozenset(names), tuple(prefixes), tuple(suffixes)


# Functions that write, take locks or session state that only the primary session has, or fail
# on a standby. Matched on the unqualified, lower-cased name, whatever the schema.
WRITE_FUNCTIONS: frozenset[str]
# Families of write functions: any name starting with one of these is a write.
WRITE_FUNCTION_PREFIXES: tuple[str, ...]
# Any name ending with one of these is a write: pg_create_*_replication_slot and friends.
WRITE_FUNCTION_SUFFIXES: tuple[str, ...]
WRITE_FUNCTIONS, WRITE_FUNCTION_PREFIXES, WRITE_FUNCTION_SUFFIXES = load_families(
    "write_functions.txt"
)

# Statements calling these leave state in the session (settings, session advisory locks).
SESSION_FUNCTIONS: frozenset[str] = load_names("session_functions.txt")

# The catalog's immutable and stable built-ins, as generated.
CATALOG_READ_ONLY_FUNCTIONS: frozenset[str] = load_names("readonly_functions.txt")
# Hand-picked read-only built-ins the catalog file lacks (volatile or newer).
EXTRA_READ_ONLY_FUNCTIONS: frozenset[str] = load_names("readonly_functions_extra.txt")


def is_write_function(name: str) -> bool:
    """Whether calling ``name`` (``"nextval"``, ``"pg_catalog.NEXTVAL"``...) makes SQL a write."""
    unqualified = name.rpartition(".")[2].lower()
    return (
        unqualified in WRITE_FUNCTIONS
        or unqualified.startswith(WRITE_FUNCTION_PREFIXES)
        or unqualified.endswith(WRITE_FUNCTION_SUFFIXES)
    )


# What strict mode accepts: every known read-only built-in that is not also a write.
READ_ONLY_FUNCTIONS: frozenset[str] = frozenset(
    name
    for name in CATALOG_READ_ONLY_FUNCTIONS | EXTRA_READ_ONLY_FUNCTIONS
    if not is_write_function(name)
)


def is_known_read_only_call(name_parts: tuple[str, ...]) -> bool:
    """Whether a call of this (lower-case, possibly schema-qualified) name is read-only."""
    # A schema other than pg_catalog names a user's function that merely shares a built-in's
    # name. An unqualified name resolves to pg_catalog first (unless search_path says
    # otherwise explicitly, which this cannot see).
    if len(name_parts) > 1 and name_parts[-2] != "pg_catalog":
        return False
    return name_parts[-1] in READ_ONLY_FUNCTIONS


__all__ = [
    "CATALOG_READ_ONLY_FUNCTIONS",
    "EXTRA_READ_ONLY_FUNCTIONS",
    "READ_ONLY_FUNCTIONS",
    "SESSION_FUNCTIONS",
    "WRITE_FUNCTIONS",
    "WRITE_FUNCTION_PREFIXES",
    "WRITE_FUNCTION_SUFFIXES",
    "is_known_read_only_call",
    "is_write_function",
    "load_families",
    "load_names",
]
