"""The ``wait`` tool: progress while waiting, refusal of bad input, cancel."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_tasks import TaskStatus, ToolError
from mcp_tasks.engine import Change, ChangeKind

from ..quiesce import settle_tasks
from .support import TESTER, TIMEOUT, FakeContext, load_tool, open_runtime


async def test_reports_progress_until_done() -> None:
    ctx = FakeContext()
    with anyio.fail_after(TIMEOUT):
        text = await load_tool("wait").fn(ctx, seconds=0.05)
    assert text == "Waited 0.05 seconds."
    assert ctx.progress == [
        (0, 0.05, "waiting 0.05 s"),
        (0.05, 0.05, "waited 0.05 of 0.05 s"),
    ]


@pytest.mark.parametrize("seconds", [-1, 86_401])
async def test_refuses_out_of_range_durations(seconds: float) -> None:
    with pytest.raises(ToolError, match="between 0 and 86400"):
        await load_tool("wait").fn(FakeContext(), seconds=seconds)


class FirstProgress:
    """A change listener: the first progress report, and the run's stop."""

    def __init__(self) -> None:
        self.events: list[Change] = []
        self.heard = anyio.Event()
        self.run_stopped = anyio.Event()

    def task_changed(self, change: Change) -> None:
        if change.kind is ChangeKind.PROGRESS:
            self.events.append(change)
            self.heard.set()
        if change.kind is ChangeKind.PHASE and change.reason == "run stopped":
            self.run_stopped.set()


async def test_runtime_cancel_stops_a_long_wait(tmp_path: Path) -> None:
    async with open_runtime(tmp_path) as runtime:
        listener = FirstProgress()
        runtime.subscribe(listener)
        task = await runtime.submit(TESTER, "wait", {"seconds": 3600})
        with anyio.fail_after(TIMEOUT):
            await listener.heard.wait()
        assert listener.events[0].data == {"progress": 0, "total": 3600}
        running = await runtime.get(TESTER, task.task_id)
        assert running.status_message == "waiting 3600 s"
        cancelled = await runtime.cancel(TESTER, task.task_id)
        assert cancelled.status is TaskStatus.CANCELLED
        # The body unwinds, the run records that it stopped (freeing the
        # task's slot in the journal) and gives its worker back.
        with anyio.fail_after(TIMEOUT):
            await listener.run_stopped.wait()
            await settle_tasks()  # the runner's last lines, after the write
        assert runtime.statistics().running == 0
