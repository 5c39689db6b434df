"""Tools the end-to-end tests serve (``mcp-tasks serve --tools e2e_tools.py``).

Loaded by path into a real server subprocess, so this module imports only the
public ``mcp_tasks`` API. ``gate`` is the one that waits. It talks to the test
over the Unix socket ``[tools.gate] events`` of the server config, where the
test's `EventHub` listens: it reports what it does (started, released,
stopped) as one line per event, and it waits for the test to release its
``key`` on a connection of its own (``wait <key>``, answered ``go``), blocked
on the socket until then or until it is cancelled. So a test learns that the
body really started or really stopped from the body itself, without polling.

``progress_gate`` reports progress once and then waits like ``gate``;
``progress_steps`` reports each of its steps and waits at a gate after each.

The other tools end at once: ``echo`` (structured result), ``progress``
(reports progress ``steps`` times), ``tool_error`` (an ``isError`` result),
``protocol_error`` (a JSON-RPC error), ``task_only`` (``task_support`` is
``required``) and ``no_task`` (``forbidden``).
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from mcp_tasks import ProtocolError, TaskContext, ToolError, tool


class GateConfig(BaseModel):
    """``[tools.gate]``: the Unix socket where the test's `EventHub` listens."""

    model_config = ConfigDict(extra="forbid")

    events: str | None = None


async def _emit(ctx: TaskContext, kind: str, key: str) -> None:
    """Tell the test ``<kind> <key> <attempt>``; silently skipped if nobody listens."""
    path = ctx.config.get("events")
    if not isinstance(path, str):
        return
    try:
        async with await anyio.connect_unix(path) as stream:
            await stream.send(f"{kind} {key} {ctx.attempt}\n".encode())
    except OSError:
        pass


async def _released(ctx: TaskContext, key: str) -> None:
    """Block until the test releases ``key`` (cancellable)."""
    try:
        stream = await anyio.connect_unix(str(ctx.config["events"]))
    except OSError as exc:
        raise ToolError(f"gate {key}: no test to release it ({exc})") from None
    async with stream:
        await stream.send(f"wait {key}\n".encode())
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise ToolError(f"gate {key}: the test went away") from None


@tool(task_support="optional", config=GateConfig)
async def gate(ctx: TaskContext, key: str) -> str:
    """Wait until the test releases ``key`` (or the task is cancelled)."""
    await _emit(ctx, "started", key)
    try:
        await _released(ctx, key)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _emit(ctx, "stopped", key)
        raise
    await _emit(ctx, "released", key)
    return f"released {key}"


@tool(task_support="optional", config=GateConfig)
async def progress_gate(ctx: TaskContext, key: str, done: int, total: int) -> str:
    """Report ``done`` of ``total``, then wait like `gate`."""
    await ctx.report_progress(done, total, f"{done} of {total} done")
    await _emit(ctx, "started", key)
    await _released(ctx, key)
    return f"released {key}"


@tool(task_support="optional", config=GateConfig)
async def progress_steps(ctx: TaskContext, key: str, total: int) -> str:
    """For each step ``n`` of ``total``: report ``n/total``, then wait like `gate` on ``key/n``."""
    for step in range(1, total + 1):
        await ctx.report_progress(step, total, f"step {step} of {total}")
        await _emit(ctx, "started", f"{key}/{step}")
        await _released(ctx, f"{key}/{step}")
    return f"{total} steps released"


@tool(task_support="optional")
async def echo(text: str, repeat: int = 1) -> dict[str, Any]:
    """Return the text, repeated."""
    return {"text": text * repeat, "repeat": repeat}


@tool(task_support="optional")
async def progress(ctx: TaskContext, steps: int) -> str:
    """Report progress ``steps`` times, then return."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step} of {steps}")
    return f"{steps} steps"


@tool(task_support="optional")
async def tool_error(message: str) -> str:
    """End with a tool execution error (``isError: true``) saying ``message``."""
    raise ToolError(message)


@tool(task_support="optional")
async def protocol_error(code: int, message: str) -> str:
    """End with the JSON-RPC error ``code``/``message`` (data names the tool)."""
    raise ProtocolError(code, message, {"tool": "protocol_error"})


@tool(task_support="required")
async def task_only(text: str) -> str:
    """Only runs as a task."""
    return f"task_only: {text}"


@tool(task_support="forbidden")
async def no_task(text: str) -> str:
    """Never runs as a task."""
    return f"no_task: {text}"
