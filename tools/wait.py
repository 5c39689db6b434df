"""The ``wait`` tool: waits a number of seconds, reporting progress."""

from __future__ import annotations

import anyio

from mcp_tasks import TaskContext, ToolError, tool


@tool(task_support="optional")
async def wait(ctx: TaskContext, seconds: float) -> str:
    """Wait ``seconds`` seconds (at most one day), reporting progress each second.

    Cancellable at any moment. Useful to try tasks out and to test clients.
    """
    if not 0 <= seconds <= 86_400:
        raise ToolError("seconds must be between 0 and 86400")
    await ctx.report_progress(0, seconds, f"waiting {seconds:g} s")
    waited = 0.0
    while waited < seconds:
        step = min(1.0, seconds - waited)
        await anyio.sleep(step)
        waited += step
        await ctx.report_progress(
            waited, seconds, f"waited {waited:g} of {seconds:g} s"
        )
    return f"Waited {seconds:g} seconds."
