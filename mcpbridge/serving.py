"""One MCP session of an ``MCPServer`` over streams we choose, through the SDK's public API.

``MCPServer`` serves stdio only through the SDK's threaded transport, and keeps the
low-level ``Server`` that could serve other streams private. The SDK's public pieces
are enough to do without it: the low-level ``mcp.server.Server`` serves any pair of
message streams (``Server.run``), and ``MCPServer``'s public ``list_tools``,
``call_tool``, ``list_resources``, ``list_resource_templates``, ``read_resource`` and
``list_prompts`` are its registry. :func:`lowlevel_server` wires the one to the other,
answering as ``MCPServer``'s own handlers do:

- a tool that fails (``ToolError``, or an argument the input schema refuses) is a tool
  result with ``isError`` and the error's message; ``MCPError`` stays a protocol error;
- a resource that fails is a protocol error carrying the resource's URI
  (``INVALID_PARAMS`` when no resource matches, ``INTERNAL_ERROR`` otherwise).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from mcp.server import Server, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
    UnexpectedResourceError,
)
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    BlobResourceContents,
    CallToolRequestParams,
    CallToolResult,
    InputRequiredResult,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    TextContent,
    TextResourceContents,
)

logger = logging.getLogger("pgwarden.mcp")

Context = ServerRequestContext[Any]


def lowlevel_server(server: MCPServer) -> Server[Any]:
    """A low-level server that answers with ``server``'s tools, resources and prompts."""

    async def list_tools(ctx: Context, params: PaginatedRequestParams | None) -> ListToolsResult:
        return ListToolsResult(tools=await server.list_tools())

    async def call_tool(
        ctx: Context, params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        return await _call_tool(server, params)

    async def list_resources(
        ctx: Context, params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return ListResourcesResult(resources=await server.list_resources())

    async def list_resource_templates(
        ctx: Context, params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(
            resource_templates=await server.list_resource_templates()
        )

    async def read_resource(
        ctx: Context, params: ReadResourceRequestParams
    ) -> ReadResourceResult | InputRequiredResult:
        return await _read_resource(server, params)

    async def list_prompts(
        ctx: Context, params: PaginatedRequestParams | None
    ) -> ListPromptsResult:
        return ListPromptsResult(prompts=await server.list_prompts())

    return Server(
        server.name,
        version=server.version,
        title=server.title,
        description=server.description,
        instructions=server.instructions,
        website_url=server.website_url,
        icons=server.icons,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
    )


async def _call_tool(
    server: MCPServer, params: CallToolRequestParams
) -> CallToolResult | InputRequiredResult:
    try:
        return await server.call_tool(params.name, params.arguments or {})
    except MCPError:
        raise
    except ToolError as exc:
        # Unknown tool, refused arguments, or the tool's own error: the client's to read.
        logger.info("tool %r failed: %r", params.name, str(exc))
        return _tool_error(str(exc))
    except Exception as exc:
        logger.exception("tool %r raised an unexpected exception", params.name)
        return _tool_error(str(exc))


def _tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


async def _read_resource(
    server: MCPServer, params: ReadResourceRequestParams
) -> ReadResourceResult | InputRequiredResult:
    uri = str(params.uri)
    try:
        results = await server.read_resource(params.uri)
    except ResourceError as exc:
        if isinstance(exc, UnexpectedResourceError):
            logger.exception("resource %r raised an unexpected exception", uri)
        else:
            logger.info("resource %r failed: %r", uri, str(exc))
        code = INVALID_PARAMS if isinstance(exc, ResourceNotFoundError) else INTERNAL_ERROR
        raise MCPError(code=code, message=str(exc), data={"uri": uri}) from None
    if isinstance(results, InputRequiredResult):
        return results
    contents: list[TextResourceContents | BlobResourceContents] = []
    for item in results:
        if isinstance(item.content, bytes):
            contents.append(
                BlobResourceContents(
                    uri=params.uri,
                    blob=base64.b64encode(item.content).decode(),
                    mime_type=item.mime_type or "application/octet-stream",
                    _meta=item.meta,
                )
            )
        else:
            contents.append(
                TextResourceContents(
                    uri=params.uri,
                    text=item.content,
                    mime_type=item.mime_type or "text/plain",
                    _meta=item.meta,
                )
            )
    return ReadResourceResult(contents=contents)
