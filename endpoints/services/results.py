"""The base classes of the services' typed results.

Every service that answers a caller (the MCP tools, the management commands, the
dashboard) returns a :class:`Result`: a frozen pydantic model whose attributes say what
it holds and whose JSON (:meth:`Result.as_json`, or the MCP SDK's own serialisation,
which publishes the model as the tool's ``outputSchema``) is the shape callers see.

Contract:

- A field whose JSON name is not a Python name (``from``) is spelled with a trailing
  underscore in Python and serialised under its JSON name.
- A top-level answer is an :class:`Answer`: it may carry a ``warning`` (the MCP
  bridge's unsafe mode), which is left out of the JSON when there is none.
- Values are JSON-safe already (timestamps as ISO 8601 strings); no result holds a
  password or a connection string.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field


class Result(BaseModel):
    """A typed, immutable result; its JSON is what callers see."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True, validate_by_name=True)

    def as_json(self) -> dict[str, Any]:
        """The result as JSON-ready data, under the field names callers see."""
        return self.model_dump(mode="json")


class Answer(Result):
    """A service's whole answer to one call; ``warning`` is said only when there is one."""

    warning: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Present only when the server runs in an unsafe mode, and says which.",
    )

    def warned(self, warning: str) -> Self:
        """This answer carrying ``warning`` (itself when ``warning`` is empty)."""
        return self.model_copy(update={"warning": warning}) if warning else self


def json_name(name: str, **field: Any) -> Any:
    """A field serialised (and read from JSON) as ``name``: a keyword (``from``) or a
    name pydantic models keep for themselves (``schema``)."""
    return Field(validation_alias=name, serialization_alias=name, **field)
