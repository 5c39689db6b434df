"""The protocol bindings: the only package that imports ``mcp``.

One module per task wire generation (`_legacy` for 2025-11-25, `_extension` for
the 2026-07-28 extension), both over the same `TaskRuntime`; `_server`
assembles them with the tools and the transports; `_http` and `_connections` are
the Streamable HTTP transport (sockets, host checks, event loop and parser,
connection limits; `_httptools_guard` for the httptools parser);
`_response_mode` answers each 2025-11-25 POST as JSON or a stream;
`_guard` stands between every handler and the wire (no code 0, bounded echoes);
`_auth`, `_oauth` and `_jwks` authenticate HTTP requests (token file, OAuth
access tokens and the issuer's keys).
"""

from __future__ import annotations

from mcp_tasks.binding._auth import HttpAuth
from mcp_tasks.binding._common import Transport
from mcp_tasks.binding._http import fast_loop, listen, url
from mcp_tasks.binding._server import McpTasksServer

__all__ = ["HttpAuth", "McpTasksServer", "Transport", "fast_loop", "listen", "url"]
