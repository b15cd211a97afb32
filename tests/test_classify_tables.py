"""endpoints.core.classify_tables: the function tables are the data files, and classify uses them.

Each data file is read here on its own (plain text, no loader), and every name in it must
classify as that file says: a write, a strict-mode read, or a call that leaves session state.
No server is needed: test_classify.py checks the verdicts against a real standby.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from endpoints.core import classify_tables
from endpoints.core.classify import classify
from endpoints.core.classify_tables import (
    CATALOG_READ_ONLY_FUNCTIONS,
    EXTRA_READ_ONLY_FUNCTIONS,
    READ_ONLY_FUNCTIONS,
    SESSION_FUNCTIONS,
    WRITE_FUNCTION_PREFIXES,
    WRITE_FUNCTION_SUFFIXES,
    WRITE_FUNCTIONS,
    is_write_function,
    load_families,
    load_names,
)

CORE = Path(classify_tables.__file__).parent


def entries(filename: str) -> list[str]:
    """The file's non-comment, non-blank lines, read without the module's loader."""
    lines = (line.strip() for line in (CORE / filename).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def call(name: str) -> str:
    # A quoted name parses as a function call whatever it is (left, position, char...).
    return f'SELECT "{name}"(1)'


def test_the_loaded_tables_are_exactly_the_data_files() -> None:
    write_entries = entries("write_functions.txt")
    assert {e for e in write_entries if "*" not in e} == WRITE_FUNCTIONS
    assert {e[:-1] for e in write_entries if e.endswith("*")} == set(WRITE_FUNCTION_PREFIXES)
    assert {e[1:] for e in write_entries if e.startswith("*")} == set(WRITE_FUNCTION_SUFFIXES)
    assert set(entries("session_functions.txt")) == SESSION_FUNCTIONS
    assert set(entries("readonly_functions.txt")) == CATALOG_READ_ONLY_FUNCTIONS
    assert set(entries("readonly_functions_extra.txt")) == EXTRA_READ_ONLY_FUNCTIONS
    everything = CATALOG_READ_ONLY_FUNCTIONS | EXTRA_READ_ONLY_FUNCTIONS
    assert {name for name in everything if not is_write_function(name)} == READ_ONLY_FUNCTIONS


@pytest.mark.parametrize("name", entries("write_functions.txt"))
def test_every_write_function_entry_makes_sql_a_write(name: str) -> None:
    # A family entry stands for any name of the family, even one PostgreSQL adds later.
    concrete = name.replace("*", "new_function_") if name.endswith("*") else name
    concrete = concrete.replace("*", "pg_new_kind_of")
    result = classify(call(concrete))
    assert result.kind == "write", name
    assert f"calls {concrete}()" in result.reason
    assert classify(call(concrete), strict=True).kind == "write"


@pytest.mark.parametrize("filename", ["readonly_functions.txt", "readonly_functions_extra.txt"])
def test_every_read_only_entry_is_a_read_in_strict_mode_unless_it_writes(filename: str) -> None:
    names = entries(filename)
    assert names
    writes = [name for name in names if is_write_function(name)]
    for name in names:
        expected = "write" if name in writes else "read"
        assert classify(call(name), strict=True).kind == expected, name
        assert classify(f'SELECT public."{name}"(1)', strict=True).kind == "write", name
    # The catalog lists a few names that assign a transaction id; the extras list none.
    assert ("txid_current" in writes) is (filename == "readonly_functions.txt")


def test_a_name_in_no_table_is_a_read_that_strict_mode_refuses() -> None:
    name = "my_own_function"
    assert classify(call(name)).kind == "read"
    assert "not known to be read-only" in classify(call(name), strict=True).reason


@pytest.mark.parametrize("name", entries("session_functions.txt"))
def test_every_session_function_entry_marks_session_state(name: str) -> None:
    assert classify(call(name)).session_state, name
    assert not classify("SELECT lower('a')").session_state


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("NextVal\n", "is not a lower-case function name"),
        ("two words\n", "is not a lower-case function name"),
        ("nextval;\n", "is not a lower-case function name"),
        ("*lo_*\n", "may have '*' at one end only"),
    ],
)
def test_a_malformed_line_fails_the_load_with_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setattr(classify_tables, "_DATA_DIRECTORY", tmp_path)
    (tmp_path / "bad.txt").write_text("# a comment\n\nlower\n" + text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt") as raised:
        load_families("bad.txt")
    assert message in str(raised.value)


def test_families_are_refused_where_only_names_belong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(classify_tables, "_DATA_DIRECTORY", tmp_path)
    (tmp_path / "names.txt").write_text("lower\nlo_*\n", encoding="utf-8")
    with pytest.raises(ValueError, match="families"):
        load_names("names.txt")
    (tmp_path / "names.txt").write_text("lower\n# upper\n\n  upper  \n", encoding="utf-8")
    assert load_names("names.txt") == {"lower", "upper"}
