"""``python -m mcp_tasks``: the same as the ``mcp-tasks`` command."""

from __future__ import annotations

import sys

from mcp_tasks._cli import main

sys.exit(main())
