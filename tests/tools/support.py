"""Helpers for the default-tool tests: loading tools, a fake context, processes.

The tools live in ``tools/``, which is loaded by path rather than imported, so
tests reach them the way the server does: through `load_tools`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from mcp_tasks import OwnerId, Requester, Settings, Task, TaskRuntime, ToolSpec
from mcp_tasks._toolloader import _import, load_tools

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"
TIMEOUT = 10.0
TESTER = Requester(OwnerId("tester"))


def load_tool(name: str, config: Mapping[str, Any] | None = None) -> ToolSpec:
    """The default tool ``name``; ``config`` becomes its ``[tools.<name>]`` table."""
    tool_config = {} if config is None else {name: config}
    return load_tools([TOOLS_DIR], tool_config)[name]


def tool_module(name: str) -> Any:
    """The loaded module that defines the default tool ``name``."""
    # Imported by path, as the loader does, whether or not the tool is served.
    return _import(TOOLS_DIR / f"{name}.py")


class FakeContext:
    """The part of `TaskContext` the default tools use, recording every call.

    Progress reports and status messages are kept in order. Wrap it in a
    ``ThreadTaskContext(cast("TaskContext", fake))`` for synchronous tools.

    ``on_progress`` runs after each report is recorded (on the event loop), so
    a test can react at a precise point, for example by cancelling.
    """

    def __init__(
        self, config: Mapping[str, Any] | None = None, task_id: str = "task-1"
    ) -> None:
        self._config = dict(config or {})
        self._task_id = task_id
        self.progress: list[tuple[float, float | None, str | None]] = []
        self.statuses: list[str] = []
        self.on_progress: Callable[[], None] | None = None
        self.steps: dict[str, Any] = {}
        self._changed = anyio.Event()

    @property
    def task_id(self) -> str:
        return self._task_id

    @property
    def config(self) -> Mapping[str, Any]:
        return self._config

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        self.progress.append((progress, total, message))
        if self.on_progress is not None:
            self.on_progress()

    async def set_status(self, message: str) -> None:
        self.statuses.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    async def step(
        self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Run ``fn`` (a sync ``fn`` in a thread) and keep its result under ``name``."""
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args, **kwargs)
        else:
            result = await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        self.steps[name] = result
        return result

    async def wait_for_status(self, text: str) -> str:
        """Wait until a status message containing ``text`` was set; return it."""
        while True:
            changed = self._changed
            for status in self.statuses:
                if text in status:
                    return status
            await changed.wait()


@asynccontextmanager
async def open_runtime(
    tmp_path: Path, tool_config: Mapping[str, Mapping[str, Any]] | None = None
) -> AsyncGenerator[TaskRuntime]:
    """A runtime on a SQLite file under ``tmp_path`` serving the default tools."""
    config = dict(tool_config or {})
    tools = load_tools([TOOLS_DIR], config)
    settings = Settings(tool_config=config)
    async with TaskRuntime.open(tmp_path / "tasks.db", settings, tools) as runtime:
        yield runtime


async def wait_for_task(
    runtime: TaskRuntime, task_id: str, predicate: Callable[[Task], bool]
) -> Task:
    """Wait (on the runtime's change events, not by polling) until ``predicate`` holds."""
    return await runtime.wait_for(TESTER, task_id, predicate)


def is_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited, or a zombie nobody reaps)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # An orphan that ended stays a zombie until init reaps it, and the init of
    # some containers never does.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def wait_until_ended(pid: int) -> None:
    """Wait for process ``pid`` to end, without polling (Linux pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)
