"""The examples: ``custom_server.py`` serves its tool; the example config loads.

``custom_server.py`` runs as a stdio subprocess in ``tmp_path`` (where it
creates its journal), driven by the project's own `TaskClient`. (The former
example client is the ``mcp-tasks call`` command now: ``tests/unit/test_call_terminal.py``
and ``tests/e2e/test_call_command.py``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from mcp_tasks import Settings, load_tools
from mcp_tasks.client import TaskClient

from .support import TOOLS_DIR

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_server.py"
TIMEOUT = 15.0


async def test_custom_server_reports_progress_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with TaskClient.stdio(
            [sys.executable, str(EXAMPLE)], cwd=tmp_path
        ) as client:
            listed = await client.list_tools()
            assert [t["name"] for t in listed["tools"]] == ["count_slowly"]
            created = await client.call_tool(
                "count_slowly", {}, task={"ttl": 60_000}, progress_token="p1"
            )
            task = client.created_task(created)
            assert task is not None
            progress = await client.next_notification("notifications/progress")
            assert progress["params"]["progress"] == 1
            assert progress["params"]["total"] == 30
            await client.cancel_task(task["taskId"])
            ended = await client.poll_task(task["taskId"], interval=0.05)
            assert ended["status"] == "cancelled"
    assert (tmp_path / "custom-server.db").exists()


def test_example_config_enables_run_command() -> None:
    settings = Settings.load(EXAMPLE.parent / "config.toml")
    tools = load_tools([TOOLS_DIR], settings.tool_config)
    assert "run_command" in tools
    table = settings.tool_config["run_command"]
    assert table["allowed"] == ["make", "pytest", "git"]
    assert table["env"] == {"CI": "1"}
