"""The ``run_command`` tool: runs an allow-listed program and reports its output.

Disabled unless the server config has a ``[tools.run_command]`` table::

    [tools.run_command]
    allowed = ["make", "pytest", "/opt/ci/check.sh"]  # names (PATH) or absolute paths
    default_timeout_seconds = 600   # when the call gives none; omit for no limit
    cwd = "/srv/checkout"           # the call's cwd must stay inside this folder
    kill_grace_seconds = 2          # SIGTERM → SIGKILL delay when stopping
    [tools.run_command.env]         # added to (and overriding) the server's env
    CI = "1"

The program runs without a shell, in a new session (its own process group), so
stopping it stops everything it started: when the task is cancelled, when it
times out, and when the program exits while helpers it left behind still run.
Its stdout and stderr are merged; the last lines show up as the task's
``statusMessage`` while it runs, and the result carries the exit code, the
output tail and the duration.

The process group also dies with the server. The program runs under a small
supervisor (``_run_command_supervisor.py``) that leads the group and kills it
when the server process ends, even by ``kill -9``. Before the program starts,
the task records which group it is (host, boot, pid namespace, group id, the
leader's start time and a run id put in the program's environment as
``MCP_TASKS_RUN_ID``). A task cut off by a crash is failed at the next start
(``recovery="fail"``), and recovery first kills whatever of that group is still
alive on this host (`reap_lost_run`), should the supervisor have been unable to.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, cast

import anyio
import anyio.to_thread
from anyio.abc import ByteReceiveStream, Process
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mcp_tasks import TaskContext, ToolError, ToolResult, tool

#: How much of the output the result keeps (the end of it).
OUTPUT_TAIL_BYTES: Final = 64 * 1024
#: How many of the last output lines the status message shows.
STATUS_LINES: Final = 20
#: Cap on the status message, so one endless line cannot flood ``tasks/get``.
STATUS_CHARS: Final = 4000
#: Minimum time between two status updates.
STATUS_INTERVAL_SECONDS: Final = 0.25
#: Default delay between SIGTERM and SIGKILL when stopping the process group.
KILL_GRACE_SECONDS: Final = 2.0
#: How long to wait for the output pipe to close after the program exited.
DRAIN_SECONDS: Final = 1.0
#: The supervisor that leads the program's process group (see the module doc).
SUPERVISOR: Final = Path(__file__).resolve().with_name("_run_command_supervisor.py")
#: What the server writes to the supervisor once the group is recorded.
GO: Final = b"g"
#: Names the run in the program's environment, so recovery knows its processes.
RUN_ID_ENV: Final = "MCP_TASKS_RUN_ID"
#: Marks the recorded step that describes a started process group.
PROCESS_RECORD: Final = "run_command.process_group"

logger = logging.getLogger("mcp_tasks.tools.run_command")

#: The approval question's answer: one boolean.
APPROVAL_SCHEMA: Final = {
    "type": "object",
    "properties": {"approve": {"type": "boolean", "title": "Run it?"}},
    "required": ["approve"],
}


def _command(entry: str) -> str:
    # A relative path such as "./build.sh" would depend on the call's cwd,
    # which the caller controls: only bare names and absolute paths.
    if not entry:
        raise ValueError("an entry is empty")
    if os.sep in entry and not os.path.isabs(entry):
        raise ValueError(f"entry {entry!r} is a relative path")
    return entry


Command = Annotated[str, AfterValidator(_command)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class RunCommandConfig(BaseModel):
    """The ``[tools.run_command]`` table, checked when the server starts."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    allowed: list[Command]
    auto_approve: list[Command] = []
    default_timeout_seconds: Seconds | None = None
    cwd: str | None = None
    env: dict[str, str] = {}
    kill_grace_seconds: Seconds = KILL_GRACE_SECONDS


@dataclass(frozen=True, slots=True)
class Policy:
    """The validated ``[tools.run_command]`` table, ready to use."""

    allowed: tuple[str, ...]
    auto_approve: tuple[str, ...] = ()
    default_timeout_seconds: float | None = None
    root: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict[str, str]())
    kill_grace_seconds: float = KILL_GRACE_SECONDS

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Policy:
        """Read the tool's config table; raise `ToolError` naming a bad key.

        The server refuses to start with a table `RunCommandConfig` rejects,
        so the error here only reaches callers that bypass the loader.
        """
        try:
            table = RunCommandConfig.model_validate(dict(config))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise ToolError(
                f"run_command is misconfigured: [tools.run_command] {where}: "
                f"{error['msg']}"
            ) from None
        return cls(
            allowed=tuple(table.allowed),
            auto_approve=tuple(table.auto_approve),
            default_timeout_seconds=table.default_timeout_seconds,
            root=Path(table.cwd).resolve() if table.cwd is not None else None,
            env=dict(table.env),
            kill_grace_seconds=table.kill_grace_seconds,
        )


# ----------------------------------------------------------------- launching


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to start the program, checked."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout_seconds: float | None


def check_allowed(policy: Policy, command: str) -> None:
    """Refuse a command that is not on the allow-list; raise `ToolError`."""
    if command not in policy.allowed:
        allowed = ", ".join(policy.allowed) or "(nothing)"
        raise ToolError(f"{command!r} is not an allowed command; allowed: {allowed}")


async def approve(
    ctx: TaskContext, policy: Policy, command: str, launch: Launch
) -> None:
    """Have the requestor approve this exact command line unless auto-approved.

    The task waits in ``input_required`` (holding no worker) until the answer.
    Anything but an explicit approval raises `ToolError`: nothing runs.
    """
    if command in policy.auto_approve:
        return
    shown = " ".join(shlex.quote(part) for part in [command, *launch.argv[1:]])
    answer = await ctx.elicit(
        f"Run `{shown}` in {launch.cwd}?", APPROVAL_SCHEMA, key="approve"
    )
    if not (answer.accepted and answer.content.get("approve") is True):
        raise ToolError(
            f"Not run: the user did not approve `{shown}` ({answer.action})"
        )


def _executable(command: str, env: Mapping[str, str]) -> str:
    if os.path.isabs(command):
        if not os.access(command, os.X_OK):
            raise ToolError(f"{command!r} is not an executable file")
        return command
    # Resolve against the PATH the program will see, not the server's.
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise ToolError(f"{command!r} is allowed but was not found on PATH")
    return found


def _working_directory(requested: str | None, root: Path | None) -> Path:
    if root is None:
        path = Path(requested) if requested else Path.cwd()
    else:
        path = root / requested if requested else root
    # Resolving first means neither ".." nor a symlink can leave the root.
    resolved = path.resolve()
    if root is not None and not resolved.is_relative_to(root):
        raise ToolError(f"cwd {requested!r} is outside the allowed folder {root}")
    if not resolved.is_dir():
        raise ToolError(f"cwd {str(resolved)!r} is not a directory")
    return resolved


def prepare(
    policy: Policy,
    command: str,
    args: Sequence[str],
    cwd: str | None,
    timeout_seconds: float | None,
) -> Launch:
    """Resolve the program, the working directory, the environment and timeout."""
    env = {**os.environ, **policy.env}
    return Launch(
        argv=[_executable(command, env), *args],
        cwd=_working_directory(cwd, policy.root),
        env=env,
        timeout_seconds=(
            timeout_seconds
            if timeout_seconds is not None
            else policy.default_timeout_seconds
        ),
    )


# -------------------------------------------------------------------- output


class OutputTail:
    """The end of the merged output, bounded, plus a "something new" event."""

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self.total_bytes = 0
        self.changed = anyio.Event()

    def feed(self, data: bytes) -> None:
        """Append a chunk of output, forgetting what falls out of the window."""
        self.total_bytes += len(data)
        self._buffer += data
        if len(self._buffer) > self._limit:
            del self._buffer[: len(self._buffer) - self._limit]
        self.changed.set()

    @property
    def truncated(self) -> bool:
        """Whether earlier output was dropped."""
        return self.total_bytes > len(self._buffer)

    def text(self) -> str:
        """The kept output as text (invalid UTF-8 replaced)."""
        return self._buffer.decode("utf-8", errors="replace")

    def last_lines(self, count: int = STATUS_LINES) -> str:
        """The last ``count`` lines, capped at `STATUS_CHARS` characters."""
        window = bytes(self._buffer[-STATUS_CHARS * 4 :])
        lines = window.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-count:])[-STATUS_CHARS:]


async def _read_output(
    stream: ByteReceiveStream, tail: OutputTail, done: anyio.Event
) -> None:
    try:
        async for chunk in stream:
            tail.feed(chunk)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        done.set()


async def _publish_status(ctx: TaskContext, tail: OutputTail) -> None:
    # Throttled with a trailing update: output that arrives during the pause is
    # shown right after it, so the status never lags behind for long.
    while True:
        await tail.changed.wait()
        tail.changed = anyio.Event()
        await ctx.set_status(tail.last_lines())
        await anyio.sleep(STATUS_INTERVAL_SECONDS)


# ------------------------------------------------------------------- stopping


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def stop_group(process: Process, grace_seconds: float) -> None:
    """Stop the program's whole process group: SIGTERM, then SIGKILL.

    The program gets ``grace_seconds`` to exit after SIGTERM; then whatever is
    left of the group is killed. Safe to call when everything already ended.
    """
    pgid = process.pid  # start_new_session makes the supervisor its group leader
    if not _signal_group(pgid, signal.SIGTERM):
        return
    with anyio.move_on_after(grace_seconds):
        await process.wait()
    _signal_group(pgid, signal.SIGKILL)
    await process.wait()


# ------------------------------------------------------------------ recovery


def host_identity() -> dict[str, str | None]:
    """What must match for a recorded process id to mean a process here.

    The host name, the kernel's boot id and the pid namespace: a pid means
    nothing on another machine, after a reboot or in another container. A part
    this system cannot tell is None, and a record with None in it matches
    nothing.
    """
    return {
        "host": socket.gethostname(),
        "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": _readlink("/proc/self/ns/pid"),
    }


def process_record(pgid: int, run_id: str) -> dict[str, Any]:
    """The step recorded before the program starts: which group to clean up."""
    return {
        "kind": PROCESS_RECORD,
        **host_identity(),
        "pgid": pgid,
        "start_time": start_time(pgid),
        "run_id": run_id,
    }


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    # /proc/<pid>/stat after the command name, which may itself hold spaces and
    # parentheses: fields 3 (state), 4 (ppid), 5 (pgrp), ... 22 (starttime).
    stat = _read_text(f"/proc/{pid}/stat")
    return None if stat is None else stat.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None if gone.

    With the boot id, ``(pid, start_time)`` names one process for good, so a
    reused pid is never taken for the one recorded.
    """
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def _group_members(pgid: int) -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None:
            if int(fields[2]) == pgid:
                yield int(name)


def _carries(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return entry in handle.read().split(b"\0")
    except OSError:
        return False  # gone, or not ours to read


def kill_recorded_group(record: Mapping[str, Any]) -> int:
    """Kill what is still alive of a recorded process group; how many were hit.

    Acts only on a record made on this host, boot and pid namespace. The
    kernel does not reuse a pid while it names a live process group, so:

    - the group's leader (the supervisor) is still the recorded process (same
      pid, same start time): the group is the run's, killed at once;
    - another process now has the leader's pid: the run's group is gone;
    - the leader is gone: only processes still in that group whose
      environment carries the run's id are killed, one by one.

    Never a process that merely reuses a recorded pid.
    """
    pgid = record.get("pgid")
    run_id = record.get("run_id")
    here = host_identity()
    if (
        not isinstance(pgid, int)
        or not isinstance(run_id, str)
        or pgid <= 1
        or pgid == os.getpgrp()
        or None in here.values()
        or any(record.get(key) != value for key, value in here.items())
    ):
        return 0
    leader_started = start_time(pgid)
    if leader_started is not None:
        if leader_started != record.get("start_time"):
            return 0
        return 1 if _signal_group(pgid, signal.SIGKILL) else 0
    entry = f"{RUN_ID_ENV}={run_id}".encode()
    killed: set[int] = set()
    # Another round catches members forked while the last one was killing;
    # one killed but not yet gone is found again and not counted twice.
    while (
        members := {pid for pid in _group_members(pgid) if _carries(pid, entry)}
        - killed
    ):
        for pid in members:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= members
    return len(killed)


async def reap_lost_run(task_id: str, steps: Mapping[str, Any]) -> None:
    """The tool's recovery hook: kill what a run lost to a crash left alive.

    The engine calls it with the task's recorded steps before it fails the
    task at start-up (or when its lease ran out). The supervisor normally
    killed the group already; this covers the cases it could not (it was
    stopped or killed together with the server).
    """
    for value in steps.values():
        if not isinstance(value, dict):
            continue
        record = cast("dict[str, Any]", value)
        if record.get("kind") == PROCESS_RECORD:
            killed = await anyio.to_thread.run_sync(kill_recorded_group, record)
            if killed:
                logger.warning(
                    "task %s: killed what was left of process group %s",
                    task_id,
                    record.get("pgid"),
                )


# -------------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class _Ending:
    exit_code: int
    timed_out: bool


async def _supervise(
    ctx: TaskContext, process: Process, launch: Launch, policy: Policy, tail: OutputTail
) -> _Ending:
    assert process.stdout is not None
    drained = anyio.Event()
    deadline = anyio.move_on_after(launch.timeout_seconds)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_read_output, process.stdout, tail, drained)
        tg.start_soon(_publish_status, ctx, tail)
        with deadline:
            await process.wait()
        # Also stops helpers the program left behind, which would otherwise
        # keep the output pipe open.
        await stop_group(process, policy.kill_grace_seconds)
        with anyio.move_on_after(DRAIN_SECONDS):
            await drained.wait()
        tg.cancel_scope.cancel()
    return _Ending(await process.wait(), deadline.cancelled_caught)


@dataclass(slots=True)
class _Started:
    """The supervisor process and the server's end of its control pipe."""

    process: Process
    control: int
    run_id: str
    released: bool = False

    def release(self) -> None:
        """Let the supervisor start the program (the group is recorded)."""
        # BrokenPipeError: the supervisor is already gone; waiting for it says so.
        with suppress(BrokenPipeError):
            os.write(self.control, GO)
        self.released = True

    async def stop(self, grace_seconds: float) -> None:
        """Stop the group, then close the control pipe; reap the supervisor."""
        if not self.released:
            # End of file before "go": the supervisor exits, running nothing.
            os.close(self.control)
        await stop_group(self.process, grace_seconds)
        if self.released:
            # Only now: an earlier close reads as "the server is gone", and the
            # supervisor would SIGKILL the group without the grace period.
            os.close(self.control)
        await self.process.aclose()


async def _spawn(launch: Launch) -> _Started:
    run_id = secrets.token_hex(16)
    read_end, write_end = os.pipe()  # not inherited by anything but the supervisor
    try:
        process = await _open_supervisor(launch, read_end, run_id)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return _Started(process, write_end, run_id)


async def _open_supervisor(launch: Launch, control: int, run_id: str) -> Process:
    # Shielded so that a cancellation cannot strike between the fork and the
    # moment we hold the handle we need to stop it.
    with anyio.CancelScope(shield=True):
        return await anyio.open_process(
            [sys.executable, "-I", "-S", str(SUPERVISOR), str(control), *launch.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=launch.cwd,
            env={**launch.env, RUN_ID_ENV: run_id},
            start_new_session=True,
            pass_fds=(control,),
        )
    raise AssertionError("unreachable: nothing cancels a shielded scope")


async def _run(
    ctx: TaskContext, launch: Launch, policy: Policy, tail: OutputTail
) -> _Ending:
    started = await _spawn(launch)
    pgid = started.process.pid  # start_new_session: the supervisor leads the group
    try:
        # Durably, before the program runs: a crash from here on leaves a
        # record that recovery can act on (`reap_lost_run`).
        await ctx.step("process group", process_record, pgid, started.run_id)
        started.release()
        await ctx.set_status(f"Started {_display(launch.argv)} (process group {pgid})")
        return await _supervise(ctx, started.process, launch, policy, tail)
    finally:
        with anyio.CancelScope(shield=True):
            await started.stop(policy.kill_grace_seconds)


def _display(argv: Sequence[str]) -> str:
    return " ".join(argv)


def _result(
    launch: Launch, ending: _Ending, tail: OutputTail, duration: float
) -> ToolResult:
    if ending.timed_out:
        headline = (
            f"Timed out after {launch.timeout_seconds:g} s; the process group "
            "was stopped."
        )
    else:
        headline = f"Exited with code {ending.exit_code} after {duration:.1f} s."
    output = tail.text()
    structured: dict[str, Any] = {
        "command": launch.argv,
        "cwd": str(launch.cwd),
        "exit_code": ending.exit_code,
        "timed_out": ending.timed_out,
        "duration_seconds": round(duration, 3),
        "output": output,
        "output_bytes": tail.total_bytes,
        "output_truncated": tail.truncated,
    }
    cut = " (earlier output omitted)" if tail.truncated else ""
    text = f"$ {_display(launch.argv)}\n{headline}\n--- output{cut} ---\n{output}"
    return ToolResult(
        [{"type": "text", "text": text}],
        structured,
        is_error=ending.timed_out or ending.exit_code != 0,
    )


# Commands are not assumed idempotent: one interrupted by a crash is not re-run.
@tool(
    task_support="optional",
    requires_config=True,
    recovery="fail",
    on_recover=reap_lost_run,
    config=RunCommandConfig,
)
async def run_command(
    ctx: TaskContext,
    command: Annotated[
        str, Field(description="Program to run: a name or path on the allow-list")
    ],
    args: Annotated[
        Sequence[str], Field(description="Arguments, passed as is (no shell)")
    ] = (),
    cwd: Annotated[
        str | None, Field(description="Working directory (inside the allowed root)")
    ] = None,
    timeout_seconds: Annotated[
        float | None, Field(gt=0, description="Stop the program after this long")
    ] = None,
) -> ToolResult:
    """Run an allow-listed program (no shell) and return its exit code and output.

    While it runs, the task's status message shows the last lines of output.
    A non-zero exit code or a timeout makes the result an error. Cancelling
    the task stops the program and everything it started.
    """
    policy = Policy.from_config(ctx.config)
    check_allowed(policy, command)
    launch = prepare(policy, command, args, cwd, timeout_seconds)
    await approve(ctx, policy, command, launch)
    tail = OutputTail()
    started = time.monotonic()
    ending = await _run(ctx, launch, policy, tail)
    return _result(launch, ending, tail, time.monotonic() - started)
