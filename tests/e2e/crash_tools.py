"""Tools for the crash-recovery end-to-end tests, loaded by the real server.

Every tool reads its ``[tools.<name>]`` table from the server config:

``log``
    The side file. Each execution of a step body (and each run of a tool body)
    appends one JSON line ``{"pid", "task", "key", "what", "phase", "at"}``, so a test
    can count how often each body ran and in which server process.
``channel``
    The Unix socket where the test listens. Every side-file line is also sent
    there (``log <line>``), so a test learns of progress as it happens. A gate
    named ``G`` connects and says ``gate G <pid>`` ("reached"), then blocks on
    the socket until the test answers ``go``, so the test can kill the server
    at that exact point ("mid-step", "between steps") without sleeping; a kill
    simply closes the connection.
``retry_after``
    Seconds `crash_retry` asks to wait before its second attempt.

Gates are only honoured where the call's ``hold`` argument names them
(``"in-s1"``: inside step ``s1``'s body; ``"before-s2"``: after step ``s1`` was
recorded and before ``s2`` starts; ``"in-work"``: inside `crash_fail`'s body).
Results depend on the arguments only, so a crash-free run gives the reference.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict

from mcp_tasks import RetryLater, TaskContext, ToolError, tool


class CrashConfig(BaseModel):
    """Each tool's ``[tools.<name>]`` table (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    log: str
    channel: str
    retry_after: float = 0.05


#: A gate gives up (failing the tool) after this long, so nothing hangs forever.
GATE_LIMIT_SECONDS = 60.0


def gate_name(key: str, point: str) -> str:
    """The name of gate ``point`` of the call with ``key``."""
    return f"{key}.{point}"


def _connect(config: Mapping[str, Any]) -> socket.socket:
    """A blocking connection to the test's channel socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(GATE_LIMIT_SECONDS)
        sock.connect(str(config["channel"]))
    except OSError:
        sock.close()
        raise
    return sock


def _tell(config: Mapping[str, Any], line: str) -> None:
    """Send ``line`` to the test; nobody listening is no error (the file has it)."""
    try:
        with _connect(config) as sock:
            sock.sendall(line.encode() + b"\n")
    except OSError:
        pass


def _log(config: Mapping[str, Any], task: str, key: str, what: str, phase: str) -> None:
    line = json.dumps(
        {
            "pid": os.getpid(),
            "task": task,
            "key": key,
            "what": what,
            "phase": phase,
            "at": time.time(),
        }
    )
    with open(config["log"], "a", encoding="utf-8") as file:
        file.write(line + "\n")
    _tell(config, f"log {line}")


def _gate(config: Mapping[str, Any], name: str) -> None:
    """Blocking: tell the test ``name`` was reached, then wait for its ``go``."""
    try:
        sock = _connect(config)
    except OSError as exc:
        raise ToolError(f"gate {name}: no test to open it ({exc})") from None
    with sock:
        sock.sendall(f"gate {name} {os.getpid()}\n".encode())
        try:
            reply = sock.recv(16)
        except TimeoutError:
            raise ToolError(f"gate {name} was never opened") from None
    if not reply:
        raise ToolError(f"gate {name}: the test went away")


def _step_body(
    config: Mapping[str, Any],
    task: str,
    key: str,
    step: str,
    index: int,
    hold: bool,
    pause: float,
) -> dict[str, Any]:
    _log(config, task, key, step, "start")
    if hold:
        _gate(config, gate_name(key, f"in-{step}"))
    if pause:
        threading.Event().wait(pause)  # the step's work takes this long
    _log(config, task, key, step, "end")
    return {"step": step, "value": index * index + len(key)}


async def _run_steps(
    ctx: TaskContext, key: str, steps: int, hold: list[str], pause: float = 0.0
) -> list[Any]:
    values: list[Any] = []
    for index in range(steps):
        step = f"s{index}"
        if f"before-{step}" in hold:
            await anyio.to_thread.run_sync(
                _gate, ctx.config, gate_name(key, f"before-{step}")
            )
        value = await ctx.step(
            step,
            _step_body,
            ctx.config,
            ctx.task_id,
            key,
            step,
            index,
            f"in-{step}" in hold,
            pause,
        )
        values.append(value)
    return values


@tool(config=CrashConfig)
async def crash_short(ctx: TaskContext, key: str, n: int) -> dict[str, Any]:
    """One step; returns ``n`` squared."""
    _log(ctx.config, ctx.task_id, key, "body", "run")
    values = await _run_steps(ctx, key, 1, [])
    return {"key": key, "square": n * n, "values": values}


@tool(config=CrashConfig)
async def crash_stepped(
    ctx: TaskContext, key: str, steps: int = 3, hold: list[str] | None = None
) -> dict[str, Any]:
    """``steps`` recorded steps, optionally holding at the gates in ``hold``."""
    _log(ctx.config, ctx.task_id, key, "body", "run")
    values = await _run_steps(ctx, key, steps, hold or [])
    return {"key": key, "values": values}


@tool(config=CrashConfig)
async def crash_long(
    ctx: TaskContext, key: str, steps: int = 40, pause: float = 0.02
) -> dict[str, Any]:
    """Many steps, each taking ``pause`` seconds: killed at an arbitrary point."""
    _log(ctx.config, ctx.task_id, key, "body", "run")
    values = await _run_steps(ctx, key, steps, [], pause)
    return {"key": key, "total": sum(v["value"] for v in values), "count": len(values)}


@tool(max_attempts=3, config=CrashConfig)
async def crash_retry(ctx: TaskContext, key: str) -> dict[str, Any]:
    """Step ``s0``; on the first attempt ask to be retried; then step ``s1``."""
    _log(ctx.config, ctx.task_id, key, "body", f"attempt-{ctx.attempt}")
    first = await _run_steps(ctx, key, 1, [])
    if ctx.attempt == 1:
        after = float(ctx.config.get("retry_after", 0.05))
        raise RetryLater("upstream busy", after_seconds=after)
    second = await ctx.step(
        "s1", _step_body, ctx.config, ctx.task_id, key, "s1", 1, False, 0.0
    )
    return {"key": key, "values": [*first, second]}


@tool(recovery="fail", config=CrashConfig)
async def crash_fail(
    ctx: TaskContext, key: str, hold: list[str] | None = None
) -> dict[str, Any]:
    """A tool that must not be re-run after a crash (``recovery="fail"``)."""
    _log(ctx.config, ctx.task_id, key, "body", "run")
    if "in-work" in (hold or []):
        await anyio.to_thread.run_sync(_gate, ctx.config, gate_name(key, "in-work"))
    return {"key": key, "done": True}


@tool(recovery="restart", config=CrashConfig)
async def crash_restart(
    ctx: TaskContext, key: str, steps: int = 3, hold: list[str] | None = None
) -> dict[str, Any]:
    """Like `crash_stepped`, but a restart forgets its recorded steps."""
    _log(ctx.config, ctx.task_id, key, "body", "run")
    values = await _run_steps(ctx, key, steps, hold or [])
    return {"key": key, "values": values}
