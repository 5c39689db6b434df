"""The ``run_command`` tool, called directly and through a real `TaskRuntime`.

Child programs are small Python scripts run with ``sys.executable`` (which the
tests put on the allow-list). They print marker lines and flush them, and the
tests wait for those markers in the status message; process ends are awaited
through pidfds. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_tasks import ConfigurationError, TaskStatus, ToolError, ToolResult
from mcp_tasks._toolloader import load_tools

from .support import (
    TESTER,
    TIMEOUT,
    TOOLS_DIR,
    FakeContext,
    is_gone,
    load_tool,
    open_runtime,
    tool_module,
    wait_for_task,
    wait_until_ended,
)

PYTHON = sys.executable

# Starts a grandchild in the same process group (it blocks for at most a
# minute), records both pids, ignores SIGTERM (noting that it arrived),
# announces itself and then blocks until a signal kills it.
GRANDCHILD = "import threading; threading.Event().wait(60)"
STUBBORN_CHILD = f"""
import os, signal, subprocess, sys
workdir = sys.argv[1]
def on_term(signum, frame):
    open(os.path.join(workdir, "got-term"), "w").close()
signal.signal(signal.SIGTERM, on_term)
grandchild = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}])
with open(os.path.join(workdir, "pids"), "w") as handle:
    handle.write(f"{{os.getpid()}} {{grandchild.pid}}")
for number in range(30):
    print(f"line {{number}}")
print("READY", flush=True)
while True:
    signal.pause()
"""


def config(**extra: Any) -> dict[str, Any]:
    """A ``[tools.run_command]`` table allowing (and auto-approving) the interpreter."""
    return {"allowed": [PYTHON], "auto_approve": [PYTHON], **extra}


async def run(ctx: FakeContext, *args: str, **kwargs: Any) -> ToolResult:
    """Call the tool body directly with ``PYTHON`` and ``args``."""
    spec = load_tool("run_command", ctx.config)
    with anyio.fail_after(TIMEOUT):
        result = await spec.fn(ctx, command=PYTHON, args=list(args), **kwargs)
    return cast("ToolResult", result)


def script(tmp_path: Path, source: str) -> str:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def read_pids(workdir: Path) -> list[int]:
    return [int(pid) for pid in (workdir / "pids").read_text().split()]


# ------------------------------------------------------------------ refusals


def test_is_disabled_without_a_config_table() -> None:
    assert "run_command" not in load_tools([TOOLS_DIR], {})
    assert "run_command" in load_tools([TOOLS_DIR], {"run_command": config()})


async def test_refuses_a_command_off_the_allow_list() -> None:
    ctx = FakeContext({"allowed": ["make", "pytest"]})
    spec = load_tool("run_command", ctx.config)
    with pytest.raises(ToolError, match=r"'rm' is not an allowed.*make, pytest"):
        await spec.fn(ctx, command="rm", args=["-rf", "/"])


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({}, "allowed"),
        ({"allowed": "make"}, "allowed"),
        ({"allowed": ["./build.sh"]}, "allowed.0"),
        ({"allowed": ["make"], "alowed": ["x"]}, "alowed"),
        ({"allowed": ["make"], "default_timeout_seconds": -1}, "default_timeout"),
        ({"allowed": ["make"], "kill_grace_seconds": True}, "kill_grace_seconds"),
        ({"allowed": ["make"], "env": {"A": 1}}, "env.A"),
    ],
)
def test_a_bad_config_stops_the_server_at_start_up(
    table: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_tool("run_command", table)
    assert caught.value.key.startswith(f"tools.run_command.{key}")


async def test_a_bad_config_that_bypassed_the_loader_refuses_to_run() -> None:
    spec = load_tool("run_command", {"allowed": ["make"]})
    ctx = FakeContext({"allowed": "make"})
    with pytest.raises(ToolError, match=r"misconfigured.*allowed"):
        await spec.fn(ctx, command="make")


async def test_refuses_an_allowed_name_missing_from_path(tmp_path: Path) -> None:
    ctx = FakeContext({"allowed": ["no-such-program"], "env": {"PATH": str(tmp_path)}})
    spec = load_tool("run_command", ctx.config)
    with pytest.raises(ToolError, match="not found on PATH"):
        await spec.fn(ctx, command="no-such-program")


async def test_keeps_cwd_inside_the_configured_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    ctx = FakeContext(config(cwd=str(root)))
    with pytest.raises(ToolError, match="outside the allowed folder"):
        await run(ctx, "-c", "pass", cwd="../")
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(ToolError, match="outside the allowed folder"):
        await run(ctx, "-c", "pass", cwd="escape")
    show_cwd = ("-c", "import os; print(os.getcwd())")
    inside = cast("dict[str, Any]", (await run(ctx, *show_cwd, cwd="sub")).structured)
    default = cast("dict[str, Any]", (await run(ctx, *show_cwd)).structured)
    assert inside["output"].strip() == str(root / "sub")
    assert default["output"].strip() == str(root)


# ------------------------------------------------------------------- results


async def test_returns_exit_code_merged_output_and_duration() -> None:
    ctx = FakeContext(config())
    code = (
        "import sys; print('to stdout', flush=True); "
        "print('to stderr', file=sys.stderr)"
    )
    result = await run(ctx, "-c", code)
    assert not result.is_error
    structured = cast("dict[str, Any]", result.structured)
    assert structured["exit_code"] == 0
    assert structured["timed_out"] is False
    assert structured["output"].splitlines() == ["to stdout", "to stderr"]
    assert structured["command"] == [PYTHON, "-c", code]
    assert structured["duration_seconds"] >= 0
    assert "Exited with code 0" in result.content[0]["text"]
    assert "to stderr" in result.content[0]["text"]


async def test_a_non_zero_exit_is_an_error_result() -> None:
    result = await run(FakeContext(config()), "-c", "print('bad'); raise SystemExit(3)")
    assert result.is_error
    structured = cast("dict[str, Any]", result.structured)
    assert structured["exit_code"] == 3
    assert structured["output"] == "bad\n"


async def test_runs_a_name_found_on_the_configured_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mytool").symlink_to(PYTHON)
    ctx = FakeContext(
        {
            "allowed": ["mytool"],
            "auto_approve": ["mytool"],
            "env": {"PATH": str(bin_dir), "GREETING": "hi"},
        }
    )
    spec = load_tool("run_command", ctx.config)
    code = "import os; print(os.environ['GREETING'])"
    result = cast("ToolResult", await spec.fn(ctx, command="mytool", args=["-c", code]))
    structured = cast("dict[str, Any]", result.structured)
    assert structured["command"][0] == str(bin_dir / "mytool")
    assert structured["output"] == "hi\n"


async def test_keeps_only_the_tail_of_long_output() -> None:
    limit = tool_module("run_command").OUTPUT_TAIL_BYTES
    code = f"import sys; sys.stdout.write('x' * {3 * limit}); print('END')"
    result = await run(FakeContext(config()), "-c", code)
    structured = cast("dict[str, Any]", result.structured)
    assert structured["output_truncated"] is True
    assert structured["output_bytes"] == 3 * limit + 4
    assert len(structured["output"]) == limit
    assert structured["output"].endswith("xEND\n")


async def test_times_out_and_stops_the_program(tmp_path: Path) -> None:
    ctx = FakeContext(config(kill_grace_seconds=0.2))
    started = time.monotonic()
    result = await run(
        ctx, script(tmp_path, STUBBORN_CHILD), str(tmp_path), timeout_seconds=0.5
    )
    assert time.monotonic() - started < TIMEOUT / 2
    assert result.is_error
    structured = cast("dict[str, Any]", result.structured)
    assert structured["timed_out"] is True
    assert "Timed out after 0.5 s" in result.content[0]["text"]
    assert "READY" in structured["output"]
    for pid in read_pids(tmp_path):
        await wait_until_ended(pid)
        assert is_gone(pid)


async def test_default_timeout_comes_from_the_config(tmp_path: Path) -> None:
    ctx = FakeContext(config(default_timeout_seconds=0.3, kill_grace_seconds=0.2))
    result = await run(ctx, script(tmp_path, STUBBORN_CHILD), str(tmp_path))
    assert cast("dict[str, Any]", result.structured)["timed_out"] is True


# -------------------------------------------------------- status and cancel


async def test_status_shows_the_last_lines_throttled(tmp_path: Path) -> None:
    child = script(
        tmp_path,
        """
        import signal, threading
        # Output spread over time (2 ms between lines, not a synchronisation),
        # so an unthrottled status would change with nearly every line.
        pace = threading.Event()
        for number in range(100):
            print(f"line {number}", flush=True)
            pace.wait(0.002)
        print("MARKER", flush=True)
        signal.pause()
        """,
    )
    ctx = FakeContext(config())
    interval = tool_module("run_command").STATUS_INTERVAL_SECONDS
    expected = [f"line {number}" for number in range(81, 100)] + ["MARKER"]
    async with anyio.create_task_group() as tg:
        started = time.monotonic()
        tg.start_soon(run, ctx, child)
        with anyio.fail_after(TIMEOUT):
            status = await ctx.wait_for_status("MARKER")
        elapsed = time.monotonic() - started
        assert status.splitlines() == expected
        # Unthrottled, each of the 101 flushed lines would be an update.
        assert len(ctx.statuses) <= 3 + elapsed / interval
        tg.cancel_scope.cancel()


async def test_cancelling_stops_the_whole_process_group(tmp_path: Path) -> None:
    ctx = FakeContext(config(kill_grace_seconds=0.5))
    pids: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, ctx, script(tmp_path, STUBBORN_CHILD), str(tmp_path))
        with anyio.fail_after(TIMEOUT):
            await ctx.wait_for_status("READY")
        pids = read_pids(tmp_path)
        tg.cancel_scope.cancel()
    # The cleanup is shielded: the group was signalled before the call ended.
    assert (tmp_path / "got-term").exists(), "SIGTERM comes first"
    with anyio.fail_after(TIMEOUT):
        for pid in pids:
            await wait_until_ended(pid)
            assert is_gone(pid)


# ----------------------------------------------------------- via the runtime


async def test_runtime_shows_output_tail_and_cancel_kills_group(
    tmp_path: Path,
) -> None:
    table = {"run_command": config(kill_grace_seconds=0.5)}
    async with open_runtime(tmp_path, table) as runtime:
        arguments = {
            "command": PYTHON,
            "args": [script(tmp_path, STUBBORN_CHILD), str(tmp_path)],
        }
        task = await runtime.submit(TESTER, "run_command", arguments)
        with anyio.fail_after(TIMEOUT):
            running = await wait_for_task(
                runtime, task.task_id, lambda t: "READY" in (t.status_message or "")
            )
        assert running.status is TaskStatus.WORKING
        status_lines = (running.status_message or "").splitlines()
        assert status_lines[-2:] == ["line 29", "READY"]
        assert len(status_lines) == 20
        pids = read_pids(tmp_path)
        cancelled = await runtime.cancel(TESTER, task.task_id)
        assert cancelled.status is TaskStatus.CANCELLED
        with anyio.fail_after(TIMEOUT):
            for pid in pids:
                await wait_until_ended(pid)
        assert all(is_gone(pid) for pid in pids)
        assert (tmp_path / "got-term").exists()


async def test_runtime_reports_a_failed_command_as_an_error_result(
    tmp_path: Path,
) -> None:
    async with open_runtime(tmp_path, {"run_command": config()}) as runtime:
        arguments = {"command": PYTHON, "args": ["-c", "raise SystemExit(2)"]}
        task = await runtime.submit(TESTER, "run_command", arguments)
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_terminal(TESTER, task.task_id)
    assert done.outcome is not None
    assert done.outcome.is_tool_error
    result = cast("dict[str, Any]", done.outcome.result)
    assert result["structuredContent"]["exit_code"] == 2


async def test_runtime_refuses_a_command_off_the_allow_list(tmp_path: Path) -> None:
    async with open_runtime(tmp_path, {"run_command": config()}) as runtime:
        task = await runtime.submit(TESTER, "run_command", {"command": "sh"})
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_terminal(TESTER, task.task_id)
    assert done.outcome is not None
    assert done.outcome.is_tool_error
    text = cast("dict[str, Any]", done.outcome.result)["content"][0]["text"]
    assert "'sh' is not an allowed command" in text
    assert os.path.basename(PYTHON) in text


# ------------------------------------------------------- crashes and recovery

# Prints its process group, its parent and its run id, then blocks.
SHOW_GROUP = """
import os, sys, threading
run_id = os.environ["MCP_TASKS_RUN_ID"]
sys.stdout.write(f"GROUP {os.getpgrp()} {os.getppid()} {run_id} END\\n")
sys.stdout.flush()
threading.Event().wait(60)
"""


class FailingStepContext(FakeContext):
    """A context whose journal write fails, as if the server died during it."""

    async def step(
        self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        raise OSError("the journal is gone")


async def test_the_process_group_is_recorded_before_the_program_runs(
    tmp_path: Path,
) -> None:
    ctx = FakeContext(config(kill_grace_seconds=0.2))
    module = tool_module("run_command")
    status = ""
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, ctx, script(tmp_path, SHOW_GROUP))
        with anyio.fail_after(TIMEOUT):
            status = await ctx.wait_for_status(" END")
        tg.cancel_scope.cancel()
    _, pgid, parent, run_id, _ = status.splitlines()[-1].split()
    record = ctx.steps["process group"]
    assert record["kind"] == module.PROCESS_RECORD
    assert record["pgid"] == int(pgid) == int(parent)  # the supervisor leads it
    assert record["run_id"] == run_id
    assert record["start_time"] > 0
    identity = {key: record[key] for key in ("host", "boot_id", "pid_namespace")}
    assert identity == module.host_identity()


async def test_the_program_does_not_run_when_recording_it_fails(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    ctx = FailingStepContext(config())
    code = f"open({str(marker)!r}, 'w').close()"
    with pytest.raises(OSError, match="journal is gone"):
        await run(ctx, "-c", code)
    assert not marker.exists()


# A group leader like run_command's supervisor: it starts two members, one
# with the environment as is and one without MCP_TASKS_RUN_ID, prints their
# pids, and then either waits or exits (leaving the members without a leader).
GROUP_LEADER = f"""
import os, subprocess, sys, threading
member = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}])
clean = {{k: v for k, v in os.environ.items() if k != "MCP_TASKS_RUN_ID"}}
other = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}], env=clean)
print(member.pid, other.pid, flush=True)
if sys.argv[1] == "wait":
    threading.Event().wait(60)
"""


async def start_group(
    tmp_path: Path, run_id: str, *, leader_exits: bool = False
) -> tuple[Process, int, int]:
    """A leader and two members in a new group (see `GROUP_LEADER`).

    Returns the leader, the member with ``MCP_TASKS_RUN_ID=<run_id>`` and the
    one without. With ``leader_exits`` the leader has exited and been reaped.
    """
    process = await anyio.open_process(
        [PYTHON, script(tmp_path, GROUP_LEADER), "exit" if leader_exits else "wait"],
        stdin=subprocess.DEVNULL,
        stderr=None,
        env={**os.environ, "MCP_TASKS_RUN_ID": run_id},
        start_new_session=True,
    )
    assert process.stdout is not None
    with anyio.fail_after(TIMEOUT):
        line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100)
        if leader_exits:
            await process.wait()
    member, other = (int(pid) for pid in line.split())
    return process, member, other


def record_of(pgid: int, run_id: str, **changes: Any) -> dict[str, Any]:
    record = tool_module("run_command").process_record(pgid, run_id)
    return {**record, **changes}


async def kill_group(leader: Process, *pids: int) -> None:
    """Clean up after a test: the group (if it has a leader) and ``pids``."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leader.returncode is None:
        with suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
    with anyio.CancelScope(shield=True):
        await leader.aclose()


async def test_recovery_kills_a_recorded_group_whose_leader_lives(
    tmp_path: Path,
) -> None:
    leader, member, other = await start_group(tmp_path, "run-1")
    steps = {"approve-1": True, "step:process group-1": record_of(leader.pid, "run-1")}
    try:
        await tool_module("run_command").reap_lost_run("task-1", steps)
        with anyio.fail_after(TIMEOUT):
            await wait_until_ended(member)
            await wait_until_ended(other)
            assert await leader.wait() == -signal.SIGKILL
    finally:
        await kill_group(leader, member, other)


async def test_recovery_kills_what_a_dead_leader_left_of_the_run(
    tmp_path: Path,
) -> None:
    leader, member, other = await start_group(tmp_path, "run-2", leader_exits=True)
    # The leader's start time no longer matters: its pid names no process.
    record = record_of(leader.pid, "run-2", start_time=1)
    try:
        assert tool_module("run_command").kill_recorded_group(record) == 1
        with anyio.fail_after(TIMEOUT):
            await wait_until_ended(member)
        assert not is_gone(other), "a process without the run's id is left alone"
    finally:
        await kill_group(leader, member, other)


@pytest.mark.parametrize(
    "changes",
    [
        {"host": "another-host"},
        {"boot_id": "another-boot"},
        {"pid_namespace": "pid:[1]"},
        {"start_time": 1},  # the leader's pid now names another process
    ],
    ids=["host", "boot", "pid-namespace", "pid-reused"],
)
async def test_recovery_leaves_a_group_alone_unless_it_is_provably_the_run(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    leader, member, other = await start_group(tmp_path, "run-3")
    try:
        record = record_of(leader.pid, "run-3", **changes)
        assert tool_module("run_command").kill_recorded_group(record) == 0
        assert not is_gone(leader.pid)
        assert not is_gone(member)
    finally:
        await kill_group(leader, member, other)
