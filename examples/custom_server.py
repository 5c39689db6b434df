"""A custom mcp-tasks server: one slow tool, served over stdio or HTTP.

Run ``python examples/custom_server.py`` (stdio) or ``... --http 8000``.
"""

from __future__ import annotations

import sys

import anyio

from mcp_tasks import Settings, TaskContext, TaskRuntime, tool, tools_from
from mcp_tasks.binding import McpTasksServer, Transport


@tool(task_support="optional")
async def count_slowly(ctx: TaskContext, to: int = 30) -> str:
    """Count to ``to``, one number a second, reporting progress."""
    for number in range(1, to + 1):
        await anyio.sleep(1)
        await ctx.report_progress(number, to, f"counted to {number}")
    return f"Counted to {to}."


async def main(argv: list[str]) -> None:
    tools = tools_from(count_slowly)
    async with TaskRuntime.open("custom-server.db", Settings(), tools) as runtime:
        if argv[:1] == ["--http"]:
            server = McpTasksServer(runtime, Transport.HTTP)
            await server.serve_http("127.0.0.1", int(argv[1]))
        else:
            await McpTasksServer(runtime, Transport.STDIO).serve_stdio()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:], backend="asyncio")
