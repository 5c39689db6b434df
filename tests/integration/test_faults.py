"""Faults an operator meets: huge results, a journal file pulled away, and the log.

- A result larger than ``limits.max_result_bytes`` is not stored: the task
  completes with a tool error saying so, and the journal's WAL goes back to
  its bounded size after a very large write.
- A journal file deleted or replaced under a running engine stops
  acknowledging work (clear error, readiness fails) instead of writing into an
  unlinked file that the next start will never see.
- Each transition of a task is one INFO line naming the task, tool, owner,
  status, attempt and duration; recovery and shutdown say what they do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from mcp_tasks import (
    JournalError,
    OwnerId,
    Requester,
    Settings,
    TaskContext,
    TaskRuntime,
    TaskStatus,
    tool,
    tools_from,
)
from mcp_tasks.journal.sqlite import _schema

TIMEOUT = 10.0
ALICE = Requester(OwnerId("alice"))
started = anyio.Event()


@tool
async def big(size: int) -> str:
    """Return ``size`` characters."""
    return "x" * size


@tool
async def held(ctx: TaskContext) -> str:
    """Wait until cancelled (or shut down)."""
    started.set()
    await anyio.sleep_forever()
    return "never"


TOOLS = tools_from(big, held)


def settings(**changes: object) -> Settings:
    return Settings(
        synchronous="NORMAL",
        shutdown_grace_seconds=0.01,
        max_result_bytes=int(changes.get("max_result_bytes", 16 * 1024 * 1024)),  # type: ignore[arg-type]
    )


async def test_a_result_over_the_limit_is_a_tool_error_and_is_not_stored(
    tmp_path: Path,
) -> None:
    async with TaskRuntime.open(
        tmp_path / "t.db", settings(max_result_bytes=10_000), TOOLS
    ) as runtime:
        small = await runtime.submit(ALICE, "big", {"size": 100})
        large = await runtime.submit(ALICE, "big", {"size": 50_000})
        with anyio.fail_after(TIMEOUT):
            kept = await runtime.wait_terminal(ALICE, small.task_id)
            refused = await runtime.wait_terminal(ALICE, large.task_id)
    assert kept.outcome is not None
    assert kept.outcome.result is not None
    assert not kept.outcome.is_tool_error
    assert refused.status is TaskStatus.COMPLETED
    assert refused.tool_error is not None
    assert "over this server's limit of 10000 bytes" in refused.tool_error
    assert "limits.max_result_bytes" in refused.tool_error


async def test_the_wal_shrinks_back_to_its_limit_after_a_large_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a limit the WAL keeps its high-water mark (here the size of one
    # huge result) for good. SQLite checkpoints by itself every ~4 MB of WAL
    # and then reuses the file from its start; with the limit it also cuts
    # the file back, so a huge write leaves no huge file behind.
    monkeypatch.setattr(_schema, "WAL_SIZE_LIMIT_BYTES", 256 * 1024)
    db = tmp_path / "t.db"
    huge = 12 * 1024 * 1024
    async with TaskRuntime.open(db, settings(), TOOLS) as runtime:
        task = await runtime.submit(ALICE, "big", {"size": huge})
        with anyio.fail_after(TIMEOUT):
            await runtime.wait_terminal(ALICE, task.task_id)
        wal = anyio.Path(f"{db}-wal")
        assert (await wal.stat()).st_size > huge  # the write went through the WAL
        with anyio.fail_after(30):
            while (await wal.stat()).st_size > huge / 2:
                await runtime.submit(ALICE, "big", {"size": 1})
        assert (await wal.stat()).st_size < 5 * 1024 * 1024


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_journal_pulled_away_under_a_running_engine_refuses_new_work(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    async with TaskRuntime.open(db, settings(), TOOLS) as runtime:
        first = await runtime.submit(ALICE, "big", {"size": 1})
        with anyio.fail_after(TIMEOUT):
            await runtime.wait_terminal(ALICE, first.task_id)
        await runtime.check()
        for suffix in ("", "-wal", "-shm"):
            await anyio.Path(f"{db}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            await anyio.Path(db).write_bytes(b"")
        with pytest.raises(JournalError, match=how):
            await runtime.submit(ALICE, "big", {"size": 1})
        with pytest.raises(JournalError, match=how):
            await runtime.check()  # readiness
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and how in r.getMessage()
    ]
    assert len(errors) == 1  # said once, not per write


async def test_each_transition_is_one_info_line_with_its_facts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcp_tasks.engine")
    async with TaskRuntime.open(tmp_path / "t.db", settings(), TOOLS) as runtime:
        task = await runtime.submit(ALICE, "big", {"size": 3})
        with anyio.fail_after(TIMEOUT):
            await runtime.wait_terminal(ALICE, task.task_id)
    lines = [r for r in caplog.records if getattr(r, "task_id", None) == task.task_id]
    assert [r.__dict__["status"] for r in lines] == ["accepted", "completed"]
    done = lines[-1]
    assert (done.__dict__["tool"], done.__dict__["owner"]) == ("big", "alice")
    assert done.__dict__["attempt"] == 1
    assert done.__dict__["duration_seconds"] >= 0
    message = done.getMessage()
    assert f"task {task.task_id} big owner=alice: completed attempt=1" in message
    assert "duration=" in message


async def test_shutdown_and_recovery_say_what_they_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    global started
    started = anyio.Event()
    caplog.set_level(logging.INFO, logger="mcp_tasks.engine")
    db = tmp_path / "t.db"
    async with TaskRuntime.open(db, settings(), TOOLS) as runtime:
        task = await runtime.submit(ALICE, "held", {})
        with anyio.fail_after(TIMEOUT):
            await started.wait()
    said = [r.getMessage() for r in caplog.records]
    assert any(
        "shutting down: waiting up to" in m
        and "1 running tasks" in m
        and task.task_id in m
        for m in said
    )
    assert any(
        "shutting down: stopping 1 tasks and handing them back" in m for m in said
    )
    assert any(
        f"task {task.task_id} held owner=alice: recovered (resume)" in m for m in said
    )
    assert await anyio.Path(db).exists()
