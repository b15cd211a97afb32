"""README.md: the two commands come first, and the configuration table names every variable."""

from __future__ import annotations

import re

import pytest

from project.env import VARIABLES
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_two_commands_open_the_readme() -> None:
    first_block = README.split("```", 2)[1]

    assert "make run" in first_block
    assert "make test" in first_block


@pytest.mark.parametrize("name", list(VARIABLES))
def test_every_variable_is_in_the_configuration_table(name: str) -> None:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]

    assert re.search(rf"^\| `{name}` \|", section, re.MULTILINE), f"{name} missing from README"


def test_the_configuration_table_names_no_unknown_variable() -> None:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]

    assert set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE)) == set(VARIABLES)
