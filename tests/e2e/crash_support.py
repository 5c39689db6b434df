"""Helpers for the crash-recovery tests: real server processes, side files, gates.

`Workspace` is one test's folder: the journal, a config file whose
``[tools.<name>]`` tables point the tools in ``crash_tools.py`` at a side file
and at the test's `ToolChannel` socket, and a bearer-token file (so the owner
of the tasks is the same client in every server process, and ``tasks/list``
works). `Server` runs ``mcp-tasks serve --http 127.0.0.1:0`` as a subprocess
that a test can ``kill -9``; it is ready once it logs the port it got.
`SideLog` reads what the tool bodies recorded; `snapshot_journal` copies the
journal of a killed server aside and reads what it had committed.

Synchronisation never sleeps or polls: the tools report to the test over a
Unix socket (each side-file line; each gate they reach, where they then block
until the test opens it), the test awaits those reports with a deadline, and
otherwise it blocks on a protocol call such as ``tasks/result`` or on a
process ending (``Popen.wait``, pidfd).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_tasks.client import RpcError, TaskClient

from ..unix_streams import UnixListener, UnixStream, unix_listener
from .crash_tools import gate_name
from .support import ServerOutput, spawn_http_server

TOOLS_FILE = Path(__file__).resolve().with_name("crash_tools.py")
TOOL_NAMES = (
    "crash_short",
    "crash_stepped",
    "crash_long",
    "crash_retry",
    "crash_fail",
    "crash_restart",
)
TOKEN = "crash-recovery-test-token-0123456789"
CLIENT_ID = "crash-tester"
#: Bound on any single wait for the server (start-up, a gate, a result).
DEADLINE = 15.0
#: Tasks live long enough for any test; the value only matters to retention.
TASK_TTL_MS = 600_000
EXIT_JOURNAL = 3


async def process_ended(pid: int) -> None:
    """Wait until child process ``pid`` has exited (Linux pidfd, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already reaped
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------- channel


class ToolChannel:
    """The test's end of the Unix socket the crash tools report to.

    A tool connects once per message; the first line says what it is. ``log
    <json>`` is a side-file line (also appended to the file), kept in
    `entries`. ``gate <name> <pid>`` is a tool of server ``pid`` holding at
    gate ``name``: it is kept in `reached`, and answered ``go`` once the test
    opened that gate (at once if it already had). The connection ends when
    the tool does, so a server killed at a gate leaves nothing behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[Entry] = []
        self.reached: list[tuple[str, int]] = []
        self._opened: set[str] = set()
        self._changed: anyio.Event | None = None

    def open(self, name: str) -> None:
        """Let tools holding at gate ``name`` (now or later) go on."""
        self._opened.add(name)
        self._note_change()

    def _note_change(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _next_change(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (up to `DEADLINE`) until ``predicate`` holds, woken by each report."""
        try:
            with anyio.fail_after(DEADLINE):
                while not predicate():
                    await self._next_change()
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {DEADLINE:g} s waiting for {what}"
            ) from None

    @asynccontextmanager
    async def listening(self) -> AsyncGenerator[None]:
        """Listen on the socket for the duration of the block."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        listener = await unix_listener(self.path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve, listener)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve(self, listener: UnixListener) -> None:
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: UnixStream) -> None:
        async with stream:
            lines = BufferedByteReceiveStream(stream)
            with suppress(
                anyio.EndOfStream,
                anyio.IncompleteRead,
                anyio.DelimiterNotFound,
                anyio.BrokenResourceError,
            ):
                while True:
                    line = (await lines.receive_until(b"\n", 65536)).decode()
                    kind, _, rest = line.partition(" ")
                    if kind == "gate":
                        name, pid = rest.split()
                        await self._hold(stream, lines, name, int(pid))
                        return
                    assert kind == "log", f"unknown report {line!r}"
                    self.entries.append(Entry(**json.loads(rest)))
                    self._note_change()

    async def _hold(
        self,
        stream: UnixStream,
        lines: BufferedByteReceiveStream,
        name: str,
        pid: int,
    ) -> None:
        self.reached.append((name, pid))
        self._note_change()

        async def answer() -> None:
            while name not in self._opened:
                await self._next_change()
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(b"go\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer)
            # Ends when the tool closes its end: after "go", or when it is gone.
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await lines.receive()
            tg.cancel_scope.cancel()


# --------------------------------------------------------------- workspace


@dataclass
class Workspace:
    """The files of one test: journal, config, tokens, side file; its channel."""

    root: Path
    retry_after: float = 0.05
    workers: int = 16
    channel: ToolChannel = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # A short folder of its own: Unix socket paths must stay under ~100 bytes.
        folder = tempfile.mkdtemp(prefix="mcpt-crash-")
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        self.channel = ToolChannel(Path(folder) / "tools.sock")
        self.write_config()
        self.tokens.write_text(
            f'[[client]]\nid = "{CLIENT_ID}"\ntoken = "{TOKEN}"\n', encoding="utf-8"
        )

    @property
    def db(self) -> Path:
        return self.root / "journal.db"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.toml"

    @property
    def log(self) -> Path:
        return self.root / "side.jsonl"

    def write_config(self) -> None:
        """(Re)write the config file: one ``[tools.<name>]`` table per tool."""
        tables = [
            f"[tools.{name}]\n"
            f"log = {json.dumps(str(self.log))}\n"
            f"channel = {json.dumps(str(self.channel.path))}\n"
            f"retry_after = {self.retry_after!r}\n"
            for name in TOOL_NAMES
        ]
        limits = f"[limits]\nworkers = {self.workers}\nclient_concurrency = 16\n\n"
        self.config.write_text(limits + "\n".join(tables), encoding="utf-8")

    def open_gate(self, key: str, point: str) -> None:
        """Let a tool holding (now or later) at gate ``point`` of ``key`` go on."""
        self.channel.open(gate_name(key, point))

    def side_log(self) -> SideLog:
        return SideLog.read(self.log)


# ------------------------------------------------------------------ server


@dataclass
class Server:
    """``mcp-tasks serve --http`` as a subprocess on the port it picked."""

    workspace: Workspace
    process: subprocess.Popen[bytes]
    output: ServerOutput
    port: int
    stderr_path: Path

    @classmethod
    def start(cls, workspace: Workspace, *, label: str = "server") -> Server:
        """Start a server on the workspace's journal; return once it listens."""
        number = len(list(workspace.root.glob(f"{label}-*.stderr")))
        stderr_path = workspace.root / f"{label}-{number}.stderr"
        command = [
            sys.executable,
            "-m",
            "mcp_tasks",
            "serve",
            "--http",
            "127.0.0.1:0",
            "--db",
            str(workspace.db),
            "--config",
            str(workspace.config),
            "--tokens",
            str(workspace.tokens),
            "--tools",
            str(TOOLS_FILE),
        ]
        process, output = spawn_http_server(command, stderr_path)
        server = cls(workspace, process, output, 0, stderr_path)
        try:
            port = output.port(DEADLINE)
        except TimeoutError:
            server.kill()
            raise TimeoutError(
                f"server not listening after {DEADLINE:g} s:\n{server.stderr()}"
            ) from None
        if port is None:
            server.kill()
            raise AssertionError(
                f"server exited with {process.returncode} at start-up:\n{server.stderr()}"
            )
        server.port = port
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """``kill -9`` the server and reap it (its output copied in full)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=DEADLINE)
        self.output.join()

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """`ToolChannel.wait_until`, failing at once if this server dies meanwhile."""
        died = False

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal died
            await process_ended(self.pid)
            died = True
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            await self.workspace.channel.wait_until(predicate, what)
            tg.cancel_scope.cancel()
        if died:
            raise AssertionError(f"server died waiting for {what}:\n{self.stderr()}")

    async def reached(self, key: str, point: str) -> None:
        """Wait until a tool of this server reached gate ``point`` of ``key``."""
        name = gate_name(key, point)
        reached = self.workspace.channel.reached
        await self.wait_until(lambda: (name, self.pid) in reached, f"gate {name}")

    @asynccontextmanager
    async def client(self) -> AsyncGenerator[TaskClient]:
        """A 2025-11-25 client of this server, as the token's client."""
        async with TaskClient.http(self.url, token=TOKEN) as client:
            yield client

    @asynccontextmanager
    async def doomed_client(self) -> AsyncGenerator[TaskClient]:
        """A `client` that is expected to see this server killed under it.

        When the server dies, the SDK's HTTP transport raises the connection
        errors of the requests in flight out of the ``async with`` (cancelling
        the block). Those are swallowed once the server is dead; anything else,
        or any error while it is still alive, propagates.
        """
        try:
            async with self.client() as client:
                yield client
        except* httpx2.TransportError:
            if self.alive():
                raise


@asynccontextmanager
async def serving(
    workspace: Workspace, *, label: str = "server"
) -> AsyncGenerator[Server]:
    """A started `Server`, killed (if still alive) when the block ends.

    The workspace's channel listens for as long; the server is killed before
    it closes, so no tool ever sees its test go away.
    """
    async with workspace.channel.listening():
        server = await anyio.to_thread.run_sync(
            functools.partial(Server.start, workspace, label=label)
        )
        try:
            yield server
        finally:
            server.kill()


def run_cli(*args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    """Run ``mcp-tasks`` (stdio, no client) to completion; for start-up errors."""
    return subprocess.run(
        [sys.executable, "-m", "mcp_tasks", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ------------------------------------------------------------- side files


@dataclass(frozen=True)
class Entry:
    """One line of the side file: one execution of a body or a step body."""

    pid: int
    task: str
    key: str
    what: str
    phase: str
    at: float


@dataclass
class SideLog:
    """Everything the tool bodies recorded, in order."""

    entries: list[Entry] = field(default_factory=lambda: list[Entry]())

    @classmethod
    def read(cls, path: Path) -> SideLog:
        if not path.exists():
            return cls()
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls([Entry(**json.loads(line)) for line in lines if line])

    def count(
        self,
        key: str,
        what: str,
        phase: str | None = None,
        *,
        pid: int | None = None,
    ) -> int:
        """How many lines match ``key``, ``what`` and optionally phase and process."""
        return sum(
            1
            for e in self.entries
            if e.key == key
            and e.what == what
            and (phase is None or e.phase == phase)
            and (pid is None or e.pid == pid)
        )

    def step_starts(self, *, pid: int | None = None) -> Counter[tuple[str, str]]:
        """``(task id, step)`` → how many times that step body started."""
        return Counter(
            (e.task, e.what)
            for e in self.entries
            if e.phase == "start" and (pid is None or e.pid == pid)
        )


# ------------------------------------------------------------ the journal


@dataclass(frozen=True)
class TaskRow:
    """A task as a killed server's journal had it."""

    task_id: str
    tool: str
    arguments: dict[str, Any]
    status: str
    phase: str
    retries: int
    not_before: float | None
    status_message: str | None


@dataclass(frozen=True)
class JournalSnapshot:
    """What a killed server's journal had committed: tasks and recorded steps."""

    tasks: dict[str, TaskRow]
    steps: set[tuple[str, str]]

    def has_step(self, task_id: str, step: str) -> bool:
        return (task_id, f"step:{step}-1") in self.steps


def snapshot_journal(db: Path, into: Path) -> JournalSnapshot:
    """Copy ``db`` (with its WAL) to ``into`` and read the copy.

    The server must be dead: then the files are a consistent picture of what it
    had committed. The original is left untouched, so the restarted server
    recovers from exactly the state the crash left.
    """
    into.mkdir(parents=True, exist_ok=True)
    copy = into / db.name
    for suffix in ("", "-wal", "-shm"):
        source = db.with_name(db.name + suffix)
        if source.exists():
            shutil.copyfile(source, copy.with_name(copy.name + suffix))
    connection = sqlite3.connect(copy)
    try:
        rows = connection.execute(
            "SELECT task_id, tool_name, arguments, status, phase, retries,"
            " not_before, status_message FROM tasks"
        ).fetchall()
        steps = connection.execute("SELECT task_id, step_key FROM steps").fetchall()
    finally:
        connection.close()
    tasks = {
        r[0]: TaskRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7])
        for r in rows
    }
    return JournalSnapshot(tasks, {(t, k) for t, k in steps})


def user_version(db: Path) -> int:
    """``PRAGMA user_version`` of ``db`` (the journal's schema version)."""
    connection = sqlite3.connect(db)
    try:
        ((version,),) = connection.execute("PRAGMA user_version").fetchall()
    finally:
        connection.close()
    return int(version)


# --------------------------------------------------------------- protocol


async def submit(client: TaskClient, tool: str, arguments: Mapping[str, Any]) -> str:
    """Call ``tool`` as a task; return the task id from the ``CreateTaskResult``."""
    created = await client.call_tool(tool, arguments, task={"ttl": TASK_TTL_MS})
    task = client.created_task(created)
    assert task is not None, f"no task created: {created}"
    return str(task["taskId"])


async def outcome(client: TaskClient, task_id: str) -> dict[str, Any]:
    """Block on ``tasks/result``; the structured result or ``{"error": ...}``."""
    with anyio.fail_after(DEADLINE):
        try:
            result = await client.task_result(task_id)
        except RpcError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
    if result.get("isError"):
        return {"toolError": result.get("content")}
    structured = result.get("structuredContent")
    assert isinstance(structured, dict), f"unexpected result {result}"
    return dict(structured)  # pyright: ignore[reportUnknownArgumentType]


async def outcomes(client: TaskClient, task_ids: Mapping[str, str]) -> dict[str, Any]:
    """``name → outcome`` for ``name → task id``, awaited concurrently."""
    found: dict[str, Any] = {}

    async def one(name: str, task_id: str) -> None:
        found[name] = await outcome(client, task_id)

    async with anyio.create_task_group() as tg:
        for name, task_id in task_ids.items():
            tg.start_soon(one, name, task_id)
    return found


async def list_all(client: TaskClient) -> list[dict[str, Any]]:
    """Every task ``tasks/list`` shows this client, across pages."""
    tasks: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await client.list_tasks(cursor)
        tasks.extend(page["tasks"])
        cursor = page.get("nextCursor")
        if not cursor:
            return tasks


# -------------------------------------------------------------- invariants


def check_exactly_once_recording(
    log: SideLog,
    servers: list[tuple[int, JournalSnapshot | None]],
    *,
    forgetful: frozenset[str] = frozenset(),
) -> None:
    """Assert what durable steps promise across a sequence of server processes.

    ``servers`` lists each server process on the journal in the order they ran:
    its pid and, if it was killed, the journal it left (`snapshot_journal`).
    Then: within one process no step body starts twice; a step the journal had
    recorded when a server died never starts again in a later process (unless
    its task is in ``forgetful``: ``recovery="restart"`` forgets steps); and a
    task the journal had already finished never runs again.
    """
    per_process = Counter(
        (e.pid, e.task, e.what) for e in log.entries if e.phase == "start"
    )
    repeated = {k: n for k, n in per_process.items() if n > 1}
    assert not repeated, f"step bodies started twice in one process: {repeated}"
    for index, (pid, snapshot) in enumerate(servers):
        if snapshot is None:
            continue
        later = {p for p, _ in servers[index + 1 :]}
        for e in (e for e in log.entries if e.pid in later):
            row = snapshot.tasks.get(e.task)
            if row is None:
                continue
            assert row.phase != "done", (
                f"task {e.key} was {row.status} when server {pid} died, "
                f"yet ran again: {e}"
            )
            if e.phase == "start" and e.task not in forgetful:
                assert not snapshot.has_step(e.task, e.what), (
                    f"step {e.what} of {e.key} was recorded before server {pid} "
                    f"died, yet its body ran again: {e}"
                )
