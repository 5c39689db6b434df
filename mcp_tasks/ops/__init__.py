"""The operator's side: metrics, the operator command line and the client command.

Imports the engine and the journal, never ``mcp`` (the HTTP routes that serve
these live in `mcp_tasks.binding`).
"""

from __future__ import annotations

from mcp_tasks.ops._metrics import Metrics

__all__ = ["Metrics"]
