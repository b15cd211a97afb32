"""README.md: the two commands come first, and the configuration table names every variable."""

from __future__ import annotations

import re

import pytest

from project.env import VARIABLES
from tests.helpers import ROOT

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


def test_the_assistant_role_sql_is_what_the_local_cluster_runs() -> None:
    """The README's SQL for a real cluster is endpoints.core.purposes', statement for statement."""
    from endpoints.core.purposes import ASSISTANT_ROLE, ASSISTANT_WRITE_ROLE, assistant_role_sql

    section = README.split("### Roles: who the assistant connects as", 1)[1]
    block = section.split("```sql", 1)[1].split("```", 1)[0]
    code = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
    shown = [" ".join(statement.split()) for statement in code.split(";") if statement.strip()]

    def unquoted(statement: str) -> str:
        return re.sub(r'"([a-z_][a-z0-9_]*)"', r"\1", statement)

    expected = [
        unquoted(statement)
        for role, writes in ((ASSISTANT_ROLE, False), (ASSISTANT_WRITE_ROLE, True))
        for statement in assistant_role_sql(role, "'...'", writes=writes)
    ]
    assert shown == expected


def test_every_relative_link_points_at_a_file_or_folder_that_exists() -> None:
    links = re.findall(r"\]\(((?!https?:|#|mailto:)[^)\s]+)\)", README)
    assert links, "the README links no file at all"
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert missing == []
