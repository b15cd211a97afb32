""".env.example is generated from project.env and must match it, so it never goes stale."""

from __future__ import annotations

import re

from project.env import VARIABLES, render_env_example
from tests.helpers import ROOT

ENV_EXAMPLE = ROOT / ".env.example"
REGENERATE = (
    'regenerate it: python -c "from project.env import render_env_example as r; '
    "print(r(), end='')\" > .env.example"
)


def _assignments(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_env_example_is_the_rendered_text() -> None:
    assert ENV_EXAMPLE.read_text() == render_env_example(), f".env.example is stale; {REGENERATE}"


def test_every_variable_is_in_env_example_with_its_help() -> None:
    text = ENV_EXAMPLE.read_text()
    assignments = _assignments(text)

    for name, variable in VARIABLES.items():
        assert name in assignments, f"{name} is missing from .env.example; {REGENERATE}"
        assert f"# {variable.help}\n" in text, name


def test_env_example_leaves_secrets_blank_and_shows_defaults() -> None:
    assignments = _assignments(ENV_EXAMPLE.read_text())

    for name, variable in VARIABLES.items():
        if variable.default is not None:
            assert assignments[name] == variable.default, name
        elif variable.secret:
            # A copied example must not run with a published key.
            assert assignments[name] == "", name
        else:
            assert assignments[name] == variable.example, name


def test_env_example_assigns_each_name_once_and_only_names() -> None:
    lines = [
        line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    ]
    names = [line.split("=", 1)[0] for line in lines]

    assert len(names) == len(set(names))
    for line in lines:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), line
