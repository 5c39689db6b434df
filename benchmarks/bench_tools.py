"""Tools the benchmarks serve: no-op work, a start stamp, holds, a question, steps.

Loaded by ``mcp-tasks serve --tools benchmarks/bench_tools.py`` and imported by
the in-process engine figures (through `spec_of`).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from mcp_tasks import TaskContext, tool

APPROVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}},
    "required": ["approve"],
}


@tool(task_support="optional")
async def noop() -> str:
    """Return at once: the work every throughput figure runs."""
    return "ok"


@tool(task_support="optional")
async def stamp() -> str:
    """Return the wall-clock time at which the body started (seconds, as text)."""
    return f"{time.time():.6f}"


@tool(task_support="optional")
async def hold(seconds: float) -> str:
    """Hold a worker for ``seconds`` (keeps a client at its cap)."""
    await anyio.sleep(seconds)
    return "held"


@tool(task_support="optional")
async def ask_once(ctx: TaskContext) -> str:
    """Ask one question; the task then waits ``input_required`` holding nothing."""
    reply = await ctx.elicit("Approve?", APPROVE_SCHEMA, key="approve")
    return "approved" if reply.accepted and reply.content["approve"] else "declined"


async def _unit(index: int) -> int:
    return index


@tool(task_support="optional")
async def durable_steps(ctx: TaskContext, count: int = 100) -> int:
    """Run ``count`` trivial units, each as a durable step (one journal write each)."""
    total = 0
    for index in range(count):
        total += await ctx.step(f"unit-{index}", _unit, index)
    return total


@tool(task_support="optional")
async def plain_steps(count: int = 100) -> int:
    """Run the same ``count`` trivial units as plain calls (nothing recorded)."""
    total = 0
    for index in range(count):
        total += await _unit(index)
    return total


@tool(task_support="optional")
async def echo_text(text: str) -> str:
    """Return ``text``: arguments and a result of the caller's size (sealing cost)."""
    return text
