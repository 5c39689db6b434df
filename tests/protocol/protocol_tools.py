"""Tools for the in-process protocol tests; gates are events the tests control."""

from __future__ import annotations

from collections import defaultdict

import anyio

from mcp_tasks import ProtocolError, TaskContext, ToolError, tool

GATES: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
STARTED: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)


def reset() -> None:
    """Forget every gate (called by each test's fixture)."""
    GATES.clear()
    STARTED.clear()


@tool
async def echo(text: str) -> str:
    """Return the text."""
    return text


@tool
async def gate(key: str) -> str:
    """Start, then wait until the test opens the gate called ``key``."""
    STARTED[key].set()
    await GATES[key].wait()
    return f"opened {key}"


@tool
async def progress(ctx: TaskContext, steps: int) -> str:
    """Report progress ``steps`` times."""
    for done in range(1, steps + 1):
        await ctx.report_progress(done, steps, f"step {done}")
    return "done"


@tool
async def broken() -> str:
    """Fail with a tool error the model can read."""
    raise ToolError("the widget is broken")


@tool
async def refused() -> str:
    """Fail with a JSON-RPC error."""
    raise ProtocolError(-32602, "no widgets here")


@tool(task_support="required")
async def only_task() -> str:
    """Only runs as a task."""
    return "as a task"


@tool(task_support="forbidden")
async def never_task() -> str:
    """Never runs as a task."""
    return "right away"


@tool
async def confirm(ctx: TaskContext, what: str) -> str:
    """Ask the user to confirm ``what``."""
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
    }
    answer = await ctx.elicit(f"Confirm {what}?", schema, key="confirm")
    if answer.accepted and answer.content["ok"]:
        return f"confirmed {what}"
    return f"not confirmed ({answer.action})"


@tool(task_support="forbidden")
async def ask_name(ctx: TaskContext) -> str:
    """Ask for a name, synchronously."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    }
    answer = await ctx.elicit("Your name?", schema, key="name")
    return f"Hello, {answer.content['name']}!"


@tool(
    input_schema={
        "type": "object",
        "properties": {"count": {"type": "integer"}},
        "required": ["count"],
    }
)
async def counted(count: int) -> str:
    """Validated by a JSON schema (whose messages quote the value given)."""
    return f"counted {count}"
