"""``run_command`` and ``kill -9`` of its server: nothing it started outlives the run.

A real ``mcp-tasks serve --http`` serves the default ``run_command`` tool, which
runs a small Python program (the "child"). The child starts a grandchild in its
process group, then connects to the test's Unix socket and reports three pids:
its own, the grandchild's and its parent's (the supervisor that leads the
group). The test then kills the server with SIGKILL and waits, through pidfds
and with a deadline, for those processes to end; a restarted server on the
same journal reports the task ``failed``.

The second test takes the supervisor out first (SIGSTOP, as if it hung), so
the group outlives the server; the restarted server's recovery must kill it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import textwrap
from collections.abc import AsyncGenerator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_tasks.client import TaskClient

from ..unix_streams import UnixListener, unix_listener
from .crash_support import process_ended
from .support import TIMEOUT, HttpServer, ServerFiles, start_task

RUN_COMMAND = Path(__file__).resolve().parents[2] / "tools" / "run_command.py"
PYTHON = sys.executable

# The grandchild blocks for at most a minute, so a failing test leaks nothing
# for long.
CHILD = """
import os, socket, subprocess, sys, threading
grandchild = subprocess.Popen(
    [sys.executable, "-c", "import threading; threading.Event().wait(60)"]
)
with socket.socket(socket.AF_UNIX) as report:
    report.connect(sys.argv[1])
    report.sendall(f"{os.getpid()} {grandchild.pid} {os.getppid()}\\n".encode())
threading.Event().wait(60)
"""


class RunCommandServer(ServerFiles):
    """Server files for ``run_command`` alone (it replaces the e2e tools)."""

    def argv(self, http: tuple[str, int] | None = None) -> list[str]:
        argv = super().argv(http)
        argv[argv.index("--tools") + 1] = str(RUN_COMMAND)
        return argv


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short folder: Unix socket paths must stay under ~100 bytes."""
    with tempfile.TemporaryDirectory(prefix="mcpt-run-") as root:
        yield Path(root)


def server_files(folder: Path) -> ServerFiles:
    config = folder / "config.toml"
    config.write_text(
        "[tools.run_command]\n"
        f"allowed = [{json.dumps(PYTHON)}]\n"
        f"auto_approve = [{json.dumps(PYTHON)}]\n"
    )
    (folder / "child.py").write_text(textwrap.dedent(CHILD))
    return RunCommandServer(root=folder, config=config, db=folder / "tasks.db")


@asynccontextmanager
async def reports(path: Path) -> AsyncGenerator[UnixListener]:
    """Listen on ``path`` for the child's report."""
    listener = await unix_listener(path)
    async with listener:
        yield listener


async def read_report(listener: UnixListener) -> list[int]:
    """The child's pids: its own, its grandchild's, its supervisor's."""
    with anyio.fail_after(TIMEOUT):
        async with await listener.accept() as stream:
            line = await BufferedByteReceiveStream(stream).receive_until(b"\n", 100)
    return [int(pid) for pid in line.split()]


async def all_ended(pids: list[int]) -> None:
    with anyio.fail_after(TIMEOUT):
        for pid in pids:
            await process_ended(pid)


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` in /proc (``R``, ``S``, ``T``, ``Z``...); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped does not count)."""
    return process_state(pid) not in (None, "Z", "X")


def kill_all(pids: list[int]) -> None:
    """Leave nothing behind if the test failed."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def start_child(server: HttpServer, folder: Path) -> str:
    """Call ``run_command`` on the child as a task; its task id."""
    arguments = {
        "command": PYTHON,
        "args": [str(folder / "child.py"), str(folder / "report.sock")],
    }
    async with TaskClient.http(server.url) as client:
        task = await start_task(client, "run_command", arguments)
    return str(task["taskId"])


async def status_after_restart(files: ServerFiles, task_id: str) -> dict[str, object]:
    restarted = HttpServer(files)
    await anyio.to_thread.run_sync(restarted.start)
    try:
        async with TaskClient.http(restarted.url) as client:
            return await client.get_task(task_id)
    finally:
        await anyio.to_thread.run_sync(restarted.stop)


async def test_the_programs_process_group_dies_with_a_killed_server(
    folder: Path,
) -> None:
    files = server_files(folder)
    server = HttpServer(files)
    pids: list[int] = []
    try:
        async with reports(folder / "report.sock") as listener:
            await anyio.to_thread.run_sync(server.start)
            task_id = await start_child(server, folder)
            pids = await read_report(listener)
        server.signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(server.wait)

        await all_ended(pids)  # child, grandchild and supervisor
        assert not any(is_alive(pid) for pid in pids)

        task = await status_after_restart(files, task_id)
    finally:
        server.stop()
        kill_all(pids)
    assert task["status"] == "failed"
    assert "does not resume interrupted work" in str(task.get("statusMessage"))


async def test_recovery_kills_a_group_that_outlived_its_server(
    folder: Path,
) -> None:
    files = server_files(folder)
    server = HttpServer(files)
    pids: list[int] = []
    try:
        async with reports(folder / "report.sock") as listener:
            await anyio.to_thread.run_sync(server.start)
            task_id = await start_child(server, folder)
            pids = await read_report(listener)
        child, grandchild, parent = pids
        # The supervisor cannot act on the server's death while stopped. No
        # need to wait for the stop itself: once kill() returns the SIGSTOP is
        # pending, and a process handles pending signals before it runs any
        # more of its own code, so it cannot see the server die (which comes
        # after this) before it stops.
        os.kill(parent, signal.SIGSTOP)
        server.signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(server.wait)
        assert is_alive(child)
        assert is_alive(grandchild)

        task = await status_after_restart(files, task_id)
        await all_ended([child, grandchild])
    finally:
        server.stop()
        kill_all(pids)
    assert task["status"] == "failed"
