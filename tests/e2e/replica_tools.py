"""A tool for the replica tests: it records where and when each run of it ran.

``placed`` appends ``start <task> <attempt> <replica> <ns>`` when its body
starts and ``end <task> <attempt> <replica> <ns>`` when it ends (returns or is
stopped)
to ``[tools.placed] runs``, with the machine's monotonic clock, which every
process on it shares. Then, like ``e2e_tools.gate``, it tells the test's
`EventHub` (``[tools.placed] events``) it started and waits at a gate there.
So a test reads from the bodies themselves which replica ran which task and
how many of a client's ran at once. ``<replica>`` is the server's
``TEST_REPLICA_NAME`` environment variable (else its pid): a replica in a pid
namespace of its own does not know its pid as the test sees it.
"""

from __future__ import annotations

import os
import time

import anyio
from pydantic import BaseModel, ConfigDict

from mcp_tasks import TaskContext, ToolError, tool


class PlacedConfig(BaseModel):
    """``[tools.placed]``: where to record runs, and the test's gate socket."""

    model_config = ConfigDict(extra="forbid")

    runs: str
    events: str


def _record(path: str, kind: str, ctx: TaskContext) -> None:
    replica = os.environ.get("TEST_REPLICA_NAME", str(os.getpid()))
    line = f"{kind} {ctx.task_id} {ctx.attempt} {replica} {time.monotonic_ns()}\n"
    # One small O_APPEND write per line: lines of concurrent processes never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@tool(task_support="optional", config=PlacedConfig)
async def placed(ctx: TaskContext, key: str) -> str:
    """Record the run's start, wait until the test releases ``key``, record its end."""
    config = PlacedConfig.model_validate(ctx.config)
    _record(config.runs, "start", ctx)
    try:
        async with await anyio.connect_unix(config.events) as stream:
            await stream.send(f"started {key} {ctx.attempt}\n".encode())
        stream = await anyio.connect_unix(config.events)
        async with stream:
            await stream.send(f"wait {key}\n".encode())
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                raise ToolError(f"placed {key}: the test went away") from None
    finally:
        _record(config.runs, "end", ctx)
    return f"placed {key}"
