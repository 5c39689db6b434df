"""Peer (b): FastMCP 4 with fastmcp-tasks (2026-07-28 wire, SEP-2663 extension).

Runs in its own virtual environment (``benchmarks/.venvs/fastmcp``), never in the
project's. Serves one tool, ``noop``, declared ``task=True``: a call from a
client that declares the ``io.modelcontextprotocol/tasks`` extension becomes a
Docket task on the chosen backend; a client that does not declare it gets the
result at once.

Usage::

    python fastmcp_server.py --http 127.0.0.1:PORT --backend memory://
    python fastmcp_server.py --http 127.0.0.1:PORT --backend redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import argparse

from fastmcp import FastMCP
from fastmcp_tasks import TasksExtension


def build(backend: str, concurrency: int) -> FastMCP:
    mcp = FastMCP("fastmcp-peer")
    mcp.add_extension(TasksExtension(url=backend, concurrency=concurrency))

    @mcp.tool(task=True)
    async def noop() -> str:  # pyright: ignore[reportUnusedFunction]
        """Return at once."""
        return "ok"

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", metavar="HOST:PORT", required=True)
    parser.add_argument("--backend", default="memory://")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    host, _, port = args.http.rpartition(":")
    build(args.backend, args.concurrency).run(
        transport="http",
        host=host,
        port=int(port),
        show_banner=False,
        log_level="WARNING",
    )


if __name__ == "__main__":
    main()
