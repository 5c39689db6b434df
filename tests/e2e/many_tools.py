"""A tool for the many-processes end-to-end tests: it records its own run times.

``timed`` appends ``start <task> <attempt> <ns>`` when its body starts and
``end <task> <attempt> <ns>`` when it ends (returns or is stopped) to the file
``[tools.timed] intervals``, using the machine's monotonic clock, which every
process on it shares. It tells the test's `EventHub` (``[tools.timed]
events``) that it started, then waits at a gate there, like ``e2e_tools.gate``. So a test sees
from the bodies themselves how many of them ran at once, on whichever server.
"""

from __future__ import annotations

import os
import time

import anyio
from pydantic import BaseModel, ConfigDict

from mcp_tasks import TaskContext, ToolError, tool


class TimedConfig(BaseModel):
    """``[tools.timed]``: where to record run times, and the test's gate socket."""

    model_config = ConfigDict(extra="forbid")

    intervals: str
    events: str


def _record(path: str, line: str) -> None:
    # One small O_APPEND write per line: lines of concurrent processes never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@tool(task_support="optional", config=TimedConfig)
async def timed(ctx: TaskContext, key: str) -> str:
    """Record the body's start, wait until the test releases ``key``, record its end."""
    config = TimedConfig.model_validate(ctx.config)
    _record(
        config.intervals, f"start {ctx.task_id} {ctx.attempt} {time.monotonic_ns()}"
    )
    try:
        async with await anyio.connect_unix(config.events) as stream:
            await stream.send(f"started {key} {ctx.attempt}\n".encode())
        stream = await anyio.connect_unix(config.events)
        async with stream:
            await stream.send(f"wait {key}\n".encode())
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                raise ToolError(f"timed {key}: the test went away") from None
    finally:
        _record(
            config.intervals, f"end {ctx.task_id} {ctx.attempt} {time.monotonic_ns()}"
        )
    return f"timed {key}"
