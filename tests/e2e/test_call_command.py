"""``mcp-tasks call`` end to end: a real server, the command as a subprocess.

The command follows a ``gate`` task (it waits until the test releases it), so
each test decides when the task ends. Covered: following the task across a
``kill -9`` and restart of the server (HTTP on both wires: the same URL; stdio:
the client starts its server command again on the same journal), attaching to
a task by id, the exit codes (0 completed, 1 failed, 2 cancelled, 3 no
outcome) and a question answered at a terminal (a pseudo-terminal), where the
prompt must start on a line of its own.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from anyio.abc import Process

from mcp_tasks.client import ConnectionClosedError, SessionGoneError, TaskClient

from .conftest import ServerFilesFactory
from .support import TIMEOUT, Gates, HttpServer, rpc_error, start_task

#: The command, as a person runs it (``python -m mcp_tasks`` is ``mcp-tasks``).
CALL = [sys.executable, "-m", "mcp_tasks", "call"]
ASK_TOOL = Path(__file__).resolve().parents[2] / "tools" / "ask.py"

EXIT_COMPLETED, EXIT_FAILED, EXIT_CANCELLED, EXIT_NO_OUTCOME = 0, 1, 2, 3


def free_port() -> int:
    """A port nothing listens on now (the restarted server must reuse it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ExampleRun:
    """``mcp-tasks call`` as a subprocess; its merged output, as it comes."""

    process: Process
    output: str = ""
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def _collect(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self.output += chunk.decode(errors="replace")
            self._changed.set()
            self._changed = anyio.Event()

    async def until(self, text: str) -> None:
        """Wait (bounded) until the output contains ``text``."""
        with anyio.fail_after(TIMEOUT):
            while text not in self.output:
                await self._changed.wait()

    async def exit_code(self) -> int:
        """Wait (bounded) for the client to end; its exit code."""
        with anyio.fail_after(2 * TIMEOUT):
            return await self.process.wait()


@asynccontextmanager
async def example(*args: str) -> AsyncGenerator[ExampleRun]:
    """Run ``mcp-tasks call ARGS``; killed if still running at the end."""
    process = await anyio.open_process(
        [*CALL, "--reconnect-seconds", "30", *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    run = ExampleRun(process)
    async with process, anyio.create_task_group() as tg:
        tg.start_soon(run._collect)
        try:
            yield run
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


async def finish(*args: str) -> tuple[int, str]:
    """Run the example to its end; its exit code and output."""
    async with example(*args) as run:
        code = await run.exit_code()
    return code, run.output


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found: list[int] = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with suppress(OSError):
                stat = Path(f"/proc/{name}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == pid:
                    found.append(int(name))
    return found


# ------------------------------------------------------------------ restart


@pytest.mark.parametrize(
    ("transport", "wire"),
    [("http", "2025-11-25"), ("http", "2026-07-28"), ("stdio", "2025-11-25")],
)
async def test_follows_its_task_across_a_server_restart(
    server_files: ServerFilesFactory, gates: Gates, transport: str, wire: str
) -> None:
    files = server_files(f"example-restart-{transport}-{wire}")
    key = gates.key()
    arguments = ["gate", f'{{"key": "{key}"}}']
    if transport == "stdio":
        target = ["--stdio", shlex.join(files.argv())]
        async with example("--wire", wire, *target, *arguments) as run:
            await gates.hub.wait("started", key, 1)
            (server,) = children_of(run.process.pid)
            os.kill(server, signal.SIGKILL)
            await gates.hub.wait("started", key, 2)  # a new server resumed it
            gates.release(key)
            code = await run.exit_code()
    else:
        server = HttpServer(files, bind_port=free_port())
        await anyio.to_thread.run_sync(server.start)
        try:
            async with example("--wire", wire, server.url, *arguments) as run:
                await gates.hub.wait("started", key, 1)
                server.signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(server.stop)  # reaps it
                # Its next poll finds nobody there. (On 2026-07-28, which has no
                # session, a server back before that poll would go unnoticed;
                # a quick restart on 2025-11-25 is the test below.)
                await run.until("connection lost")
                await anyio.to_thread.run_sync(server.start)  # same port, journal
                await gates.hub.wait("started", key, 2)
                gates.release(key)
                code = await run.exit_code()
        finally:
            server.stop()
    assert code == EXIT_COMPLETED, run.output
    assert "reconnected" in run.output
    assert f"released {key}" in run.output


async def test_a_session_the_restarted_server_does_not_know_is_a_lost_connection(
    server_files: ServerFilesFactory, gates: Gates
) -> None:
    """The server restarts between two requests: the next one gets ``404``.

    The spec has the client start a new session then, so the client raises
    `SessionGoneError`, a `ConnectionClosedError` (what ``mcp-tasks call``
    reconnects on), with the server's own code and message.
    """
    server = HttpServer(server_files("example-session-gone"), bind_port=free_port())
    await anyio.to_thread.run_sync(server.start)
    key = gates.key()
    try:
        async with TaskClient.http(server.url) as client:
            task = await start_task(client, "gate", {"key": key})
            await gates.hub.wait("started", key, 1)
            server.signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(server.stop)
            await anyio.to_thread.run_sync(server.start)
            gone = await rpc_error(lambda: client.get_task(str(task["taskId"])))
            assert isinstance(gone, SessionGoneError), gone
            assert isinstance(gone, ConnectionClosedError)
            assert (gone.code, gone.message) == (-32600, "Session not found")
        # A new session follows the same task (resumed by the new server).
        async with TaskClient.http(server.url) as client:
            await gates.hub.wait("started", key, 2)
            gates.release(key)
            done = await client.get_task(str(task["taskId"]))
            assert done["status"] in {"working", "completed"}
    finally:
        server.stop()


# ----------------------------------------------------------------- progress


@pytest.mark.parametrize(
    ("wire", "shown"),
    [
        # 2025-11-25 relays the tool's progress notifications: a bar.
        ("2025-11-25", "[working] #####............... 25% 1 of 4 done"),
        # 2026-07-28 carries no progress for tasks (the extension sends it
        # nowhere): the status message alone.
        ("2026-07-28", "[working] 1 of 4 done"),
    ],
)
async def test_shows_the_tools_progress_with_its_message(
    http_server: HttpServer, gates: Gates, wire: str, shown: str
) -> None:
    key = gates.key()
    arguments = f'{{"key": "{key}", "done": 1, "total": 4}}'
    async with example(
        "--wire", wire, http_server.url, "progress_gate", arguments
    ) as run:
        await run.until("task ")
        await gates.hub.wait("started", key)
        await run.until(shown)
        gates.release(key)
        code = await run.exit_code()
    assert code == EXIT_COMPLETED, run.output
    assert f"released {key}" in run.output


# ------------------------------------------------------------------- attach


async def test_attaches_to_a_task_by_id(http_server: HttpServer, gates: Gates) -> None:
    key = gates.key()
    async with TaskClient.http(http_server.url) as client:
        task = await start_task(client, "gate", {"key": key})
    await gates.hub.wait("started", key)
    async with example(http_server.url, "--attach", str(task["taskId"])) as run:
        await run.until("[working]")
        gates.release(key)
        code = await run.exit_code()
    assert code == EXIT_COMPLETED, run.output
    assert f"released {key}" in run.output


# --------------------------------------------------------------- exit codes


@pytest.mark.parametrize("wire", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("tool_error", '{"message": "broken"}'),
        ("protocol_error", '{"code": -32001, "message": "refused"}'),
    ],
)
async def test_exits_1_when_the_task_failed(
    http_server: HttpServer, wire: str, tool: str, arguments: str
) -> None:
    code, output = await finish("--wire", wire, http_server.url, tool, arguments)
    assert code == EXIT_FAILED, output


async def test_exits_2_when_the_task_was_cancelled(
    http_server: HttpServer, gates: Gates
) -> None:
    key = gates.key()
    async with example(http_server.url, "gate", f'{{"key": "{key}"}}') as run:
        await run.until(")\n")  # task <id> (follow it again with --attach <id>)
        task_id = run.output.split("--attach ", 1)[1].split(")")[0]
        async with TaskClient.http(http_server.url) as client:
            await client.cancel_task(task_id)
        code = await run.exit_code()
    assert code == EXIT_CANCELLED, run.output
    assert "[cancelled]" in run.output


async def test_exits_0_when_the_task_completed(http_server: HttpServer) -> None:
    code, output = await finish(http_server.url, "echo", '{"text": "hi"}')
    assert code == EXIT_COMPLETED, output
    assert "[completed]" in output


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["URL"],
        ["URL", "echo", "{not json"],
        ["URL", "echo", "[1]"],
        ["URL", "--attach", "some-id", "echo"],
    ],
    ids=["nothing", "no-tool", "bad-json", "not-an-object", "attach-and-tool"],
)
async def test_exits_3_on_bad_usage(http_server: HttpServer, args: list[str]) -> None:
    args = [http_server.url if arg == "URL" else arg for arg in args]
    code, output = await finish(*args)
    assert code == EXIT_NO_OUTCOME, output
    assert "mcp-tasks: " in output
    assert "see mcp-tasks call --help" in output


async def test_exits_3_when_the_server_refuses_or_is_unreachable(
    http_server: HttpServer,
) -> None:
    unknown_tool = await finish(http_server.url, "no_such_tool")
    unknown_task = await finish(http_server.url, "--attach", "no-such-task")
    unreachable = await finish(f"http://127.0.0.1:{free_port()}/mcp", "echo")
    for code, output in (unknown_tool, unknown_task, unreachable):
        assert code == EXIT_NO_OUTCOME, output
    assert "cannot connect" in unreachable[1]


# ------------------------------------------------------------------ stdin


@pytest.mark.parametrize("wire", ["2025-11-25", "2026-07-28"])
async def test_questions_are_answered_from_piped_stdin(
    server_files: ServerFilesFactory, wire: str
) -> None:
    files = server_files(f"call-stdin-{wire}")
    command = [*files.argv(), "--tools", str(ASK_TOOL)]
    question = '{"question": "Ship it?", "choices": ["yes", "no"]}'
    with anyio.fail_after(2 * TIMEOUT):
        done = await anyio.run_process(
            [*CALL, "--wire", wire, "--stdio", shlex.join(command), "ask", question],
            input=b"a\nyes\n",
            check=False,
        )
    output = done.stdout.decode()
    assert done.returncode == EXIT_COMPLETED, output + done.stderr.decode()
    assert "The task asks: Ship it?" in output
    assert output.endswith("[completed]\nyes\n")


# ----------------------------------------------------------------- terminal


class Pty:
    """``mcp-tasks call`` on a pseudo-terminal: what a person would see."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.master, slave = os.openpty()
        try:
            self.process = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True
            )
        finally:
            os.close(slave)
        self.screen = ""

    async def until(self, text: str) -> None:
        """Read the terminal (bounded) until it shows ``text``."""
        with anyio.fail_after(TIMEOUT):
            while text not in self.screen:
                if not await self._read():
                    raise AssertionError(f"ended without {text!r}:\n{self.screen}")

    async def to_the_end(self) -> None:
        """Read the terminal (bounded) until the client closes it."""
        with anyio.fail_after(TIMEOUT):
            while await self._read():
                pass

    async def _read(self) -> bool:
        await anyio.wait_readable(self.master)
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: the client ended and closed the terminal
            return False
        self.screen += chunk.decode(errors="replace")
        return bool(chunk)

    def type(self, line: str) -> None:
        os.write(self.master, f"{line}\n".encode())

    def close(self) -> int:
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(TIMEOUT)
        os.close(self.master)
        return code


async def test_a_question_at_a_terminal_is_asked_on_lines_of_its_own(
    server_files: ServerFilesFactory,
) -> None:
    files = server_files("example-terminal")
    command = [*files.argv(), "--tools", str(ASK_TOOL)]
    terminal = Pty(
        [
            *CALL,
            "--stdio",
            shlex.join(command),
            "ask",
            '{"question": "Ship it?", "choices": ["yes", "no"]}',
        ]
    )
    try:
        await terminal.until("[a] ")
        # The status line (redrawn in place) was finished first.
        before_question = terminal.screen.split("The task asks: Ship it?")[0]
        assert before_question.endswith("\n")
        terminal.type("a")
        await terminal.until("['yes', 'no']: ")
        terminal.type("yes")
        await terminal.to_the_end()
    finally:
        code = await anyio.to_thread.run_sync(terminal.close)
    prompt_line = terminal.screen.split("(a)ccept")[0].rsplit("\n", 1)[1]
    assert prompt_line == "  ", "the prompt starts a line of its own"
    assert terminal.screen.endswith("[completed]\r\nyes\r\n")
    assert code == EXIT_COMPLETED, terminal.screen
