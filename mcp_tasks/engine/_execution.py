"""Running one tool body and classifying how it ended.

Kept small on purpose: `execute` runs the body (async on the loop, sync in a
thread) and turns whatever happened into an `Outcome`. Nothing a tool raises
escapes, except cancellation, which is never swallowed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from mcp_tasks._exceptions import ErrorCode
from mcp_tasks._model import Outcome
from mcp_tasks._questions import InputNotSupportedError
from mcp_tasks._toolapi import (
    ProtocolError,
    RetryLater,
    TaskContext,
    ThreadTaskContext,
    ToolError,
    ToolResult,
    ToolSpec,
    result_from_return,
)

logger = logging.getLogger("mcp_tasks.execution")


@dataclass(frozen=True, slots=True)
class Retry:
    """The body asked to run again later (or raised a retryable exception)."""

    reason: str
    after_seconds: float | None = None


Verdict = Outcome | Retry


def classify_exception(spec: ToolSpec, exc: Exception) -> Verdict:
    """What a tool body that raised ``exc`` amounts to.

    `RetryLater`, and exceptions in the tool's ``retry_on`` when it allows
    retries, ask for another run. `ProtocolError` becomes a JSON-RPC error; a
    missing client capability becomes -32021 naming it; anything else,
    including `ToolError`, becomes a tool execution error the model can read.
    """
    tool = spec.name
    if isinstance(exc, RetryLater):
        return Retry(exc.reason, exc.after_seconds)
    if isinstance(exc, ProtocolError):
        return Outcome(error=exc.to_json())
    if isinstance(exc, InputNotSupportedError):
        data = {"requiredCapabilities": exc.required}
        code = int(ErrorCode.MISSING_REQUIRED_CLIENT_CAPABILITY)
        return Outcome(error={"code": code, "message": str(exc), "data": data})
    if (
        spec.max_attempts > 1
        and not isinstance(exc, ToolError)
        and isinstance(exc, spec.retry_on)
    ):
        return Retry(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ToolError):
        return Outcome(result=ToolResult.text(str(exc), is_error=True).to_json())
    logger.warning("tool %r raised", tool, exc_info=exc)
    text = f"Tool {tool!r} failed: {type(exc).__name__}: {exc}"
    return Outcome(result=ToolResult.text(text, is_error=True).to_json())


def classify_return(tool: str, value: object) -> Outcome:
    """The outcome for a tool body that returned ``value``."""
    try:
        return Outcome(result=result_from_return(value))
    except (TypeError, ValueError) as exc:
        message = f"Tool {tool!r} returned a value that cannot be encoded: {exc}"
        return Outcome(
            error={"code": int(ErrorCode.INTERNAL_ERROR), "message": message}
        )


async def _run_in_thread(
    spec: ToolSpec,
    ctx: TaskContext,
    arguments: dict[str, Any],
    limiter: anyio.CapacityLimiter | None,
) -> Any:
    # A thread cannot be interrupted. On cancellation the body is told (its
    # ctx.cancelled turns true) and the task keeps its worker until the thread
    # returns: abandoning the thread would free the slot while it still runs,
    # and repeated cancels could then pile up threads beyond the worker limit.
    thread_ctx = ThreadTaskContext(ctx)
    call = spec.bind(thread_ctx, arguments)
    value: Any = None
    raised: BaseException | None = None

    async def tell_on_cancel() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            thread_ctx.cancel()

    async def run() -> None:
        nonlocal value, raised
        try:
            value = await anyio.to_thread.run_sync(call, limiter=limiter)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # TaskSuspended too: re-raised bare below
            raised = exc
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tell_on_cancel)
        tg.start_soon(run)
    if raised is not None:
        # Outside the task group, so callers see the body's own exception
        # (ToolError, RetryLater, TaskSuspended) and not an ExceptionGroup.
        raise raised
    return value


async def execute(
    spec: ToolSpec,
    ctx: TaskContext,
    arguments: dict[str, Any],
    thread_limiter: anyio.CapacityLimiter | None = None,
) -> Verdict:
    """Run ``spec``'s body with ``arguments``; return its `Verdict`.

    Cancellation and `TaskSuspended` propagate. A synchronous body runs in a worker thread; on
    cancellation its `ThreadTaskContext` is marked cancelled so it can stop
    early, and its eventual return value is discarded.
    """
    try:
        if spec.is_async:
            value = await spec.bind(ctx, arguments)()
        else:
            value = await _run_in_thread(spec, ctx, arguments, thread_limiter)
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        return classify_exception(spec, exc)
    return classify_return(spec.name, value)
