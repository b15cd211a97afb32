"""mcpbridge.serving: an MCPServer served through the SDK's public low-level server.

In process, through the SDK's own client: no database, no child process. The stdio
tests (test_mcp.py) cover the same path with pgwarden's tools over real pipes.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from endpoints.services.results import Answer, Result, json_name
from mcpbridge.serving import lowlevel_server


class Hop(Result):
    from_: str = json_name("from")
    to: str


class Route(Answer):
    hops: list[Hop]


def _server() -> MCPServer:
    server = MCPServer(name="probe", instructions="probe instructions")

    @server.tool(structured_output=True)
    def route(start: str, warn: bool = False) -> Route:
        """A route from ``start``."""
        if start == "nowhere":
            raise ToolError("nowhere: no such place")
        if start == "crash":
            raise RuntimeError("a bug")
        answer = Route(hops=[Hop(from_=start, to="b")])
        return answer.warned("careful") if warn else answer

    @server.resource("probe://places/{name}", mime_type="application/json")
    def place(name: str) -> str:
        return json.dumps({"name": name})

    return server


def _served(body: Any) -> None:
    async def main() -> None:
        async with Client(lowlevel_server(_server())) as client:
            await body(client)

    anyio.run(main)


def test_tools_are_listed_with_their_output_schema_and_the_server_with_its_instructions() -> None:
    async def body(client: Client) -> None:
        assert client.instructions == "probe instructions"
        assert client.server_info is not None
        assert client.server_info.name == "probe"
        tools = (await client.list_tools()).tools
        assert [tool.name for tool in tools] == ["route"]
        schema = tools[0].output_schema
        assert schema is not None
        assert set(schema["properties"]) == {"hops", "warning"}
        assert "from" in json.dumps(schema)

    _served(body)


def test_a_typed_answer_arrives_as_json_under_its_json_names_and_warns_only_when_told() -> None:
    async def body(client: Client) -> None:
        plain = await client.call_tool("route", {"start": "a"})
        assert not plain.is_error
        assert plain.structured_content == {"hops": [{"from": "a", "to": "b"}]}
        assert json.loads(plain.content[0].text) == plain.structured_content  # type: ignore[union-attr]
        warned = await client.call_tool("route", {"start": "a", "warn": True})
        assert warned.structured_content == {
            "hops": [{"from": "a", "to": "b"}],
            "warning": "careful",
        }

    _served(body)


def test_tool_failures_are_tool_errors_with_their_message() -> None:
    async def body(client: Client) -> None:
        refused = await client.call_tool("route", {"start": "nowhere"})
        assert refused.is_error
        assert refused.content[0].text.endswith("nowhere: no such place")  # type: ignore[union-attr]
        invalid = await client.call_tool("route", {"start": 5})
        assert invalid.is_error
        assert "start" in invalid.content[0].text  # type: ignore[union-attr]
        crashed = await client.call_tool("route", {"start": "crash"})
        assert crashed.is_error
        unknown = await client.call_tool("no_such_tool", {})
        assert unknown.is_error

    _served(body)


def test_resources_are_read_and_a_missing_one_is_a_protocol_error_naming_its_uri() -> None:
    async def body(client: Client) -> None:
        templates = (await client.list_resource_templates()).resource_templates
        assert [template.uri_template for template in templates] == ["probe://places/{name}"]
        read = await client.read_resource("probe://places/paris")
        assert json.loads(read.contents[0].text) == {"name": "paris"}  # type: ignore[union-attr]
        with pytest.raises(MCPError) as caught:
            await client.read_resource("probe://nowhere")
        assert caught.value.error.code == INVALID_PARAMS
        assert caught.value.error.data == {"uri": "probe://nowhere"}

    _served(body)


def test_a_result_is_frozen_and_its_json_names_are_what_callers_see() -> None:
    hop = Hop(from_="a", to="b")
    assert hop.as_json() == {"from": "a", "to": "b"}
    assert Hop.model_validate({"from": "a", "to": "b"}) == hop
    with pytest.raises(ValueError, match="frozen"):
        hop.to = "c"
    route = Route(hops=[hop])
    assert route.warned("") is route
    assert "warning" not in route.as_json()
    assert route.warned("careful").as_json()["warning"] == "careful"
