"""The HTTP floor: a bare uvicorn + Starlette endpoint answering JSON-RPC.

What any Python MCP server on this stack pays per request before doing
anything of its own: one Starlette route that parses a JSON-RPC request and
answers it with a small JSON result the size of a ``tasks/get`` answer, no
SDK, no session, no journal. uvicorn runs with its defaults (its event loop
and HTTP parser are the fastest installed, as for `mcp-tasks serve`).

Run as ``python -m benchmarks.http_floor PORT``; ``fig_latency`` measures its
CPU per request in the same run as the server's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

#: A ``tasks/get`` answer's shape and size (2025-11-25).
_TASK: dict[str, Any] = {
    "taskId": "0123456789abcdef0123456789abcdef",
    "status": "completed",
    "statusMessage": "done",
    "createdAt": "2026-01-01T00:00:00.000000Z",
    "lastUpdatedAt": "2026-01-01T00:00:00.001000Z",
    "ttl": 600000,
    "pollInterval": 500,
}


async def _rpc(request: Request) -> Response:
    message = json.loads(await request.body())
    answer = {"jsonrpc": "2.0", "id": message.get("id"), "result": _TASK}
    return Response(json.dumps(answer), media_type="application/json")


app = Starlette(routes=[Route("/mcp", _rpc, methods=["POST"])])


def main() -> None:
    """Serve the floor endpoint on 127.0.0.1:PORT until killed."""
    port = int(sys.argv[1])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
