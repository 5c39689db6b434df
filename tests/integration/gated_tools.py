"""Tools whose bodies wait on events the test controls, for deterministic tests.

`Gates` is a registry keyed by a string. ``gate(key=...)`` records that it
started, then waits until the test calls ``gates.open(key)``. Everything a body
does is recorded (start order, cancellations, peak concurrency per group), so a
test can assert on what ran without sleeping. `make_tools` builds a fresh tool
set bound to one registry, as the runtime wants it: ``{spec.name: spec}``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from mcp_tasks import (
    ProtocolError,
    Question,
    TaskContext,
    ThreadTaskContext,
    ToolError,
    tool,
)
from mcp_tasks._toolapi import ToolSpec, spec_of

WAIT_SECONDS = 5.0
#: How long the second question of ``questions`` waits for an answer.
QUESTION_TIMEOUT_SECONDS = 30.0
_YES_NO: dict[str, Any] = {
    "type": "object",
    "properties": {"yes": {"type": "boolean"}},
    "required": ["yes"],
}


class Gates:
    """Events a test opens, and a record of what the gated bodies did."""

    def __init__(self) -> None:
        self._gates: dict[str, anyio.Event] = {}
        self._started: dict[str, anyio.Event] = {}
        self._ended: dict[str, anyio.Event] = {}
        self._thread_gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.thread_names: dict[str, str] = {}
        self.task_ids: dict[str, str] = {}
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    # ------------------------------------------------------------ test side

    def open(self, *keys: str) -> None:
        """Let the bodies waiting on ``keys`` (now or later) go on."""
        for key in keys:
            self.gate(key).set()
            self._thread_gate(key).set()

    def release_threads(self) -> None:
        """Open every thread gate, so that no worker thread outlives a test."""
        with self._lock:
            for event in self._thread_gates.values():
                event.set()

    async def wait_started(self, key: str) -> None:
        """Wait until a body gated on ``key`` has started (bounded)."""
        with anyio.fail_after(WAIT_SECONDS):
            await self._event(self._started, key).wait()

    async def wait_ended(self, key: str) -> None:
        """Wait until a body gated on ``key`` has ended in any way (bounded)."""
        with anyio.fail_after(WAIT_SECONDS):
            await self._event(self._ended, key).wait()

    def reset_started(self, key: str) -> None:
        """Forget that ``key`` started, to wait for a second start (restart)."""
        self._started.pop(key, None)
        self._ended.pop(key, None)

    # ------------------------------------------------------------ body side

    def _event(self, table: dict[str, anyio.Event], key: str) -> anyio.Event:
        event = table.get(key)
        if event is None:
            event = table[key] = anyio.Event()
        return event

    def gate(self, key: str) -> anyio.Event:
        """The event a body gated on ``key`` waits for."""
        return self._event(self._gates, key)

    def _thread_gate(self, key: str) -> threading.Event:
        with self._lock:  # called from the loop and from worker threads
            return self._thread_gates.setdefault(key, threading.Event())

    def enter(self, key: str, group: str) -> None:
        """Record a body start (on the event loop)."""
        self.started.append(key)
        count = self.active.get(group, 0) + 1
        self.active[group] = count
        self.peak[group] = max(self.peak.get(group, 0), count)
        self._event(self._started, key).set()

    def leave(self, key: str, group: str, *, cancelled: bool) -> None:
        """Record a body end (on the event loop)."""
        self.active[group] -= 1
        (self.cancelled if cancelled else self.finished).append(key)
        self._event(self._ended, key).set()

    async def hold(self, key: str, group: str) -> None:
        """The body of an async gated tool: record, wait for the gate, record."""
        self.enter(key, group)
        cancelled = False
        try:
            await self.gate(key).wait()
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise
        finally:
            self.leave(key, group, cancelled=cancelled)

    def hold_in_thread(self, key: str) -> None:
        """The body of a sync gated tool: block the worker thread on the gate."""
        self.thread_names[key] = threading.current_thread().name
        anyio.from_thread.run_sync(self.enter, key, "thread")
        try:
            if not self._thread_gate(key).wait(WAIT_SECONDS):
                raise TimeoutError(f"thread gate {key!r} was never opened")
        finally:
            anyio.from_thread.run_sync(
                lambda: self.leave(key, "thread", cancelled=False)
            )


def _specs(*functions: Callable[..., Any]) -> dict[str, ToolSpec]:
    tools: dict[str, ToolSpec] = {}
    for function in functions:
        spec = spec_of(function)
        assert spec is not None, function
        tools[spec.name] = spec
    return tools


@tool
async def chatty(ctx: TaskContext, lines: int) -> str:
    """Log ``lines`` lines, then return."""
    for n in range(lines):
        await ctx.log("info", f"line {n}")
    return "said it"


def make_tools(gates: Gates) -> dict[str, ToolSpec]:
    """A fresh tool set whose bodies are all controlled through ``gates``."""
    return {**_async_tools(gates), **_thread_tools(gates), **_question_tools()}


def _async_tools(gates: Gates) -> dict[str, ToolSpec]:
    @tool
    async def gate(ctx: TaskContext, key: str, group: str = "") -> str:
        """Wait until the test opens ``key``; return ``done <key>``."""
        gates.task_ids[key] = ctx.task_id
        await gates.hold(key, group)
        return f"done {key}"

    @tool
    async def stubborn(key: str) -> str:
        """Swallow cancellation and return a result anyway (a misbehaving tool)."""
        gates.enter(key, "")
        try:
            await gates.gate(key).wait()
        except anyio.get_cancelled_exc_class():
            gates.leave(key, "", cancelled=True)
            return "finished after all"
        gates.leave(key, "", cancelled=False)
        return "finished"

    @tool
    async def raises(kind: str) -> str:
        """Fail in the way ``kind`` names."""
        await anyio.lowlevel.checkpoint()
        if kind == "tool":
            raise ToolError("the input was wrong")
        if kind == "protocol":
            raise ProtocolError(-32001, "no such resource", {"id": 7})
        raise RuntimeError("boom")

    @tool
    async def progress(ctx: TaskContext, key: str) -> str:
        """Report progress twice around a gate."""
        await ctx.report_progress(1, 2, "half way")
        await gates.hold(key, "")
        await ctx.report_progress(2, 2)
        return "progressed"

    @tool
    async def structured(count: int) -> dict[str, int]:
        """Return structured content."""
        await anyio.lowlevel.checkpoint()
        return {"count": count}

    @tool(recovery="fail")
    async def fragile(key: str) -> str:
        """Like ``gate``, but a restart fails it instead of running it again."""
        await gates.hold(key, "")
        return f"done {key}"

    return _specs(gate, stubborn, raises, progress, chatty, structured, fragile)


def _question_tools() -> dict[str, ToolSpec]:
    @tool
    async def questions(ctx: TaskContext) -> str:
        """Ask two questions at once; the second one expires."""
        answers = await ctx.ask(
            {
                "first": Question.form("First?", _YES_NO),
                "second": Question.form(
                    "Second?", _YES_NO, timeout_seconds=QUESTION_TIMEOUT_SECONDS
                ),
            }
        )
        return " ".join(answers[key].action for key in ("first", "second"))

    return _specs(questions)


def _thread_tools(gates: Gates) -> dict[str, ToolSpec]:
    @tool
    def blocking(key: str) -> str:
        """A synchronous body: blocks its worker thread until ``key`` opens."""
        gates.hold_in_thread(key)
        return f"thread done {key}"

    @tool
    def blocking_progress(ctx: ThreadTaskContext, key: str) -> str:
        """A synchronous body that reports progress from its thread."""
        ctx.report_progress(1, 2, "thread half way")
        gates.hold_in_thread(key)
        return "ok"

    return _specs(blocking, blocking_progress)
