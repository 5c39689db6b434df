"""An mcp-tasks server on a real journal file, served in this process."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks import Settings, TaskRuntime, tools_from
from mcp_tasks.binding import McpTasksServer, Transport
from mcp_tasks.client import TaskClient

from . import protocol_tools

TOOLS = [
    protocol_tools.echo,
    protocol_tools.gate,
    protocol_tools.progress,
    protocol_tools.broken,
    protocol_tools.refused,
    protocol_tools.only_task,
    protocol_tools.never_task,
    protocol_tools.confirm,
    protocol_tools.ask_name,
    protocol_tools.counted,
]

Connect = Callable[..., AbstractAsyncContextManager[TaskClient]]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncGenerator[McpTasksServer]:
    protocol_tools.reset()
    specs = tools_from(*TOOLS)
    settings = Settings(poll_interval_seconds=0.05)
    async with TaskRuntime.open(tmp_path / "tasks.db", settings, specs) as runtime:
        mcp_server = McpTasksServer(runtime, Transport.STDIO)
        async with anyio.create_task_group() as tg:
            tg.start_soon(mcp_server.pushes.run)
            tg.start_soon(mcp_server.legacy.run)
            yield mcp_server
            tg.cancel_scope.cancel()


@pytest.fixture
def connect(server: McpTasksServer) -> Connect:
    def open_client(**kwargs: Any) -> AbstractAsyncContextManager[TaskClient]:
        return TaskClient.in_process(server.server, **kwargs)

    return open_client
