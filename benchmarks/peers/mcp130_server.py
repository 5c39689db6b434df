"""Peer (a): mcp 1.30's experimental in-memory task runtime (2025-11-25 wire).

Runs in its own virtual environment (``benchmarks/.venvs/mcp130``, mcp==1.30.0),
never in the project's. Serves one tool, ``noop``, that a client may call
plainly or as a task (``params.task``); a task call goes through
``ctx.experimental.run_task``, which stores the task in the SDK's
`InMemoryTaskStore` and runs the work in the `TaskSupport` task group, after
``server.experimental.enable_tasks()`` registered the default ``tasks/*``
handlers.

Usage::

    python mcp130_server.py --http 127.0.0.1:PORT     # Streamable HTTP at /mcp
    python mcp130_server.py                           # stdio
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import mcp.types as types
import uvicorn
from mcp.server.experimental.task_context import ServerTaskContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

server: Server[Any, Any] = Server("mcp130-peer")
# The deprecated experimental task API is exactly what this peer measures.
server.experimental.enable_tasks()  # pyright: ignore[reportDeprecated]

NOOP = types.Tool(
    name="noop",
    description="Return at once.",
    inputSchema={"type": "object", "properties": {}},
    execution=types.ToolExecution(taskSupport="optional"),
)


@server.list_tools()
async def list_tools() -> list[types.Tool]:
    return [NOOP]


@server.call_tool()
async def call_tool(
    name: str, arguments: dict[str, Any]
) -> types.CallToolResult | types.CreateTaskResult:
    if name != "noop":
        raise ValueError(f"unknown tool {name!r}")
    result = types.CallToolResult(content=[types.TextContent(type="text", text="ok")])
    ctx = server.request_context
    if ctx.experimental.is_task:

        async def work(task: ServerTaskContext) -> types.CallToolResult:
            return result

        return await ctx.experimental.run_task(work)
    return result


class _Endpoint:
    """The ASGI endpoint at /mcp, handing every request to the session manager."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)


def serve_http(host: str, port: int) -> None:
    manager = StreamableHTTPSessionManager(app=server)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncGenerator[None]:
        async with manager.run():
            yield

    app = Starlette(
        routes=[Route("/mcp", endpoint=_Endpoint(manager))], lifespan=lifespan
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


async def serve_stdio() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", metavar="HOST:PORT")
    args = parser.parse_args()
    if args.http:
        host, _, port = args.http.rpartition(":")
        serve_http(host, int(port))
    else:
        anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
