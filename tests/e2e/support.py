"""Helpers for the end-to-end tests: server processes, gates, events, JSON access.

Nothing here sleeps or polls to synchronise. An HTTP server is started on port
0 and is ready when it says so: `ServerOutput` reads its stderr until the line
``listening on http://127.0.0.1:<port>/mcp`` (bounded by a deadline) and tees
everything to the server's log file. The ``gate`` tool reports to and waits on
the test's `EventHub` over a Unix socket.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, cast

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_tasks.client import JSONObject, RpcError, TaskClient

from ..unix_streams import UnixListener, UnixStream

E2E_TOOLS = Path(__file__).with_name("e2e_tools.py")
#: Bound on every wait in these tests (the server answers in milliseconds).
TIMEOUT = 15.0
#: How long a server process gets to exit after SIGTERM before it is killed.
EXIT_WAIT = 10.0

INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
CAPACITY_EXCEEDED = -32000
RELATED_TASK = "io.modelcontextprotocol/related-task"

ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"


# --------------------------------------------------------------------- files


@dataclass(frozen=True)
class ServerFiles:
    """Everything one server instance reads or writes, under one folder."""

    root: Path
    config: Path
    db: Path
    tokens: Path | None = None

    @property
    def log(self) -> Path:
        """Where the server's stderr goes."""
        return self.root / "server.log"

    def argv(self, http: tuple[str, int] | None = None) -> list[str]:
        """``python -m mcp_tasks serve ...`` for this instance."""
        argv = [
            sys.executable,
            "-m",
            "mcp_tasks",
            "serve",
            "--db",
            str(self.db),
            "--config",
            str(self.config),
            "--tools",
            str(E2E_TOOLS),
        ]
        if http is None:
            argv += ["--log-level", "WARNING"]
        else:
            # INFO: the "listening on" line that says the server is ready.
            argv += ["--log-level", "INFO", "--http", f"{http[0]}:{http[1]}"]
        if self.tokens is not None:
            argv += ["--tokens", str(self.tokens)]
        return argv


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def make_server_files(
    root: Path,
    *,
    events: Path,
    limits: Mapping[str, object] | None = None,
    tokens: Sequence[Mapping[str, object]] | None = None,
    operators: Sequence[Mapping[str, object]] = (),
    extra_toml: str = "",
) -> ServerFiles:
    """Write a config (and token) file for one server instance under ``root``.

    ``tokens`` are ``[[client]]`` entries, ``operators`` ``[[operator]]`` ones.
    ``extra_toml`` is appended to the config verbatim (e.g. ``[clients.x]``).
    """
    root.mkdir(parents=True, exist_ok=True)
    lines = ["[limits]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in (limits or {}).items()]
    for gated in ("gate", "progress_gate", "progress_steps"):
        lines += ["", f"[tools.{gated}]", f"events = {_toml_value(str(events))}"]
    config = root / "config.toml"
    config.write_text("\n".join(lines) + "\n" + extra_toml)
    token_file = None
    if tokens is not None:
        token_file = root / "tokens.toml"
        entries = [
            f"[[{kind}]]\n"
            + "".join(f"{key} = {_toml_value(value)}\n" for key, value in entry.items())
            for kind, group in (("client", tokens), ("operator", operators))
            for entry in group
        ]
        token_file.write_text("\n".join(entries))
    return ServerFiles(
        root=root, config=config, db=root / "tasks.db", tokens=token_file
    )


# ------------------------------------------------------------------- servers


#: The line a server logs once its socket accepts connections (its real port).
LISTENING = re.compile(rb"listening on http://\S+:(\d+)/mcp")


class LogWatch:
    """The lines a server logged, and waits for one matching a pattern.

    `ServerOutput`'s thread feeds every line here; `line` returns the first
    line (logged before or after the call) that matches, woken by the feeding
    thread rather than by polling. A server's log is how an end-to-end test
    observes a decision that leaves nothing on the wire, such as a question
    the server chose *not* to send.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[bytes] = []
        self._waiters: list[tuple[re.Pattern[bytes], Callable[[bytes], None]]] = []

    def feed(self, line: bytes) -> None:
        """Record one line (called from the thread reading the server's output)."""
        with self._lock:
            self._lines.append(line)
            woken = [w for w in self._waiters if w[0].search(line)]
            for waiter in woken:
                self._waiters.remove(waiter)
        for _, wake in woken:
            wake(line)

    async def line(self, pattern: re.Pattern[bytes]) -> bytes:
        """The first logged line matching ``pattern``, waiting for it (unbounded).

        Bound the wait with ``anyio.fail_after``. The tests run on asyncio
        (aiosqlite needs it), so the feeding thread hands the line over with
        ``call_soon_threadsafe``.
        """
        loop = asyncio.get_running_loop()
        found: asyncio.Future[bytes] = loop.create_future()

        def settle(line: bytes) -> None:
            if not found.done():
                found.set_result(line)

        def wake(line: bytes) -> None:
            with suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, line)

        waiter = (pattern, wake)
        with self._lock:
            for line in self._lines:
                if pattern.search(line):
                    return line
            self._waiters.append(waiter)
        try:
            return await found
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)


class ServerOutput:
    """Copies a server's output pipe to its log file and spots its "listening" line.

    A thread reads the pipe line by line until it ends (the process exited),
    appending every line to ``log`` as it comes, so the log is complete once
    `join` returns. `port` blocks until the ``listening on`` line arrived.
    Every line is also fed to ``watch``, when given.
    """

    def __init__(
        self, pipe: IO[bytes], log: Path, watch: LogWatch | None = None
    ) -> None:
        self._watch = watch
        self._port: int | None = None
        self._decided = threading.Event()
        self._thread = threading.Thread(
            target=self._copy, args=(pipe, log), name=f"tee {log}", daemon=True
        )
        self._thread.start()

    def _copy(self, pipe: IO[bytes], log: Path) -> None:
        try:
            with pipe, log.open("ab") as out:
                for line in pipe:
                    out.write(line)
                    out.flush()
                    if self._watch is not None:
                        self._watch.feed(line)
                    if self._port is None and (match := LISTENING.search(line)):
                        self._port = int(match[1])
                        self._decided.set()
        finally:
            self._decided.set()  # the pipe ended: no such line is coming

    def port(self, timeout: float) -> int | None:
        """The port from the ``listening on`` line; ``None`` if output ended first.

        Raises:
            TimeoutError: Neither happened within ``timeout`` seconds.
        """
        if not self._decided.wait(timeout):
            raise TimeoutError(f"no 'listening on' line within {timeout:g} s")
        return self._port

    def join(self, timeout: float = EXIT_WAIT) -> None:
        """Wait until all output was copied (the process must have exited)."""
        self._thread.join(timeout)


def spawn_http_server(
    argv: Sequence[str], log: Path, *, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], ServerOutput]:
    """Start ``argv`` (a server on port 0) with stdout and stderr teed to ``log``."""
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    assert process.stdout is not None
    return process, ServerOutput(process.stdout, log)


@dataclass
class HttpServer:
    """``mcp-tasks serve --http 127.0.0.1:0`` as a subprocess.

    ``extra_args`` are appended to the command line; ``wrapper`` is put in
    front of it (e.g. a program that sets resource limits and then execs).
    """

    files: ServerFiles
    extra_args: list[str] = field(default_factory=lambda: list[str]())
    wrapper: list[str] = field(default_factory=lambda: list[str]())
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    #: The port to listen on; 0 picks a free one at each start.
    bind_port: int = 0
    _output: ServerOutput | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The MCP endpoint."""
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        """Start the process; return once its port accepts connections."""
        self.launch()
        self.ready()

    def launch(self) -> None:
        """Start the process on port 0 (without waiting for it)."""
        assert self.process is None, "already running"
        self.port = 0
        argv = [
            *self.wrapper,
            *self.files.argv(("127.0.0.1", self.bind_port)),
            *self.extra_args,
        ]
        self.process, self._output = spawn_http_server(
            argv, self.files.log, cwd=self.files.root
        )

    def ready(self) -> None:
        """Return once the server logged that it listens (bounded); learn its port."""
        assert self.process is not None, "not launched"
        assert self._output is not None
        if self.port:
            return
        try:
            port = self._output.port(TIMEOUT)
        except TimeoutError:
            self.stop()
            raise TimeoutError(
                f"server not listening after {TIMEOUT:g} s:\n{self.log_text()}"
            ) from None
        if port is None:
            code = self.stop()
            raise RuntimeError(
                f"server exited with {code} before listening:\n{self.log_text()}"
            )
        self.port = port

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server process."""
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = EXIT_WAIT) -> int:
        """Wait for the process to exit (and its log to be complete); its exit code."""
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._output is not None:
            self._output.join()
        return code

    def stop(self) -> int | None:
        """Terminate (then kill) the process; safe to call more than once."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(EXIT_WAIT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            code = process.returncode
        if self._output is not None:
            self._output.join()
            self._output = None
        return code

    def log_text(self) -> str:
        """What the server wrote to stderr so far."""
        return self.files.log.read_text(errors="replace")


def stdio_client(
    files: ServerFiles, errlog: TextIO
) -> AbstractAsyncContextManager[TaskClient]:
    """A `TaskClient` over stdio to a fresh server subprocess for ``files``."""
    return TaskClient.stdio(files.argv(), cwd=files.root, errlog=errlog)


# --------------------------------------------------------------------- gates


class EventHub:
    """The test's end of the ``gate`` tool's Unix socket: events and releases.

    A connection starts with one line. ``<kind> <key> <attempt>`` is an event
    the body reports (``started``, ``released``, ``stopped``); `wait` returns
    once that event arrived (or already had), for any attempt or the given one.
    ``wait <key>`` is a body waiting at its gate: the hub answers ``go`` once
    the test releases ``key`` (at once if it already did), and forgets the
    connection when the body goes away (cancelled, or its server killed).
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, int | None], anyio.Event] = {}
        self._releases: dict[str, anyio.Event] = {}
        self.received: list[tuple[str, str, int]] = []

    def _event(self, kind: str, key: str, attempt: int | None) -> anyio.Event:
        return self._events.setdefault((kind, key, attempt), anyio.Event())

    def _release(self, key: str) -> anyio.Event:
        return self._releases.setdefault(key, anyio.Event())

    def seen(self, kind: str, key: str, attempt: int | None = None) -> bool:
        """Whether ``kind`` happened for ``key`` (on ``attempt``, if given)."""
        return self._event(kind, key, attempt).is_set()

    async def wait(self, kind: str, key: str, attempt: int | None = None) -> None:
        """Wait (bounded) until the gate body for ``key`` reported ``kind``."""
        with anyio.fail_after(TIMEOUT):
            await self._event(kind, key, attempt).wait()

    def release(self, key: str) -> None:
        """Let every ``gate`` body for ``key`` (waiting now or later) return."""
        self._release(key).set()

    async def serve(self, listener: UnixListener) -> None:
        """Accept connections until cancelled."""
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
                    line = (await lines.receive_until(b"\n", 1024)).decode()
                    command, _, key = line.partition(" ")
                    if command == "wait":
                        await self._hold(stream, lines, key)
                        return
                    self._record(line)

    def _record(self, line: str) -> None:
        kind, key, attempt = line.split()
        self.received.append((kind, key, int(attempt)))
        self._event(kind, key, None).set()
        self._event(kind, key, int(attempt)).set()

    async def _hold(
        self, stream: UnixStream, lines: BufferedByteReceiveStream, key: str
    ) -> None:
        async def answer() -> None:
            await self._release(key).wait()
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(b"go\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer)
            # Ends when the body closes its end: after "go", or when it is gone.
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await lines.receive()
            tg.cancel_scope.cancel()


@contextmanager
def running(*servers: HttpServer) -> Generator[None]:
    """Every one of ``servers`` serving (started together, so their start-ups
    overlap); all stopped on the way out, however it is left."""
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.ready()
        yield
    finally:
        for server in servers:
            server.stop()


class Gates:
    """Unique gate keys for one test, released on demand or at the end."""

    def __init__(self, hub: EventHub, prefix: str) -> None:
        self.hub = hub
        self.prefix = prefix
        self.keys: list[str] = []

    def key(self) -> str:
        """A fresh key no other test uses."""
        key = f"{self.prefix}-{len(self.keys)}-{os.urandom(4).hex()}"
        self.keys.append(key)
        return key

    def release(self, key: str) -> None:
        """Let the ``gate`` body waiting on ``key`` (now or later) return."""
        self.hub.release(key)

    def release_all(self) -> None:
        """Release every key this test made, so no body outlives the test."""
        for key in self.keys:
            self.release(key)


# ---------------------------------------------------------------------- JSON


def obj(value: object) -> JSONObject:
    """``value`` as a JSON object (asserting it is one)."""
    assert isinstance(value, dict), f"expected an object, got {value!r}"
    return cast("JSONObject", value)


def objects(value: object) -> list[JSONObject]:
    """``value`` as a list of JSON objects (asserting it is one)."""
    assert isinstance(value, list), f"expected a list, got {value!r}"
    return [obj(item) for item in cast("list[object]", value)]


def created_task(result: Mapping[str, Any]) -> JSONObject:
    """The ``task`` of a 2025-11-25 ``CreateTaskResult`` (asserting the shape)."""
    assert set(result) <= {"task", "_meta"}, f"not a CreateTaskResult: {result!r}"
    return obj(result["task"])


def text_of(result: Mapping[str, Any]) -> str:
    """The text of a ``CallToolResult``'s first content block."""
    text = objects(result["content"])[0]["text"]
    assert isinstance(text, str)
    return text


def without_meta(result: Mapping[str, Any]) -> JSONObject:
    """``result`` without its ``_meta``."""
    return {key: value for key, value in result.items() if key != "_meta"}


async def start_task(
    client: TaskClient,
    name: str,
    arguments: Mapping[str, Any],
    *,
    ttl: int | None = 60_000,
    progress_token: str | None = None,
) -> JSONObject:
    """A task-augmented ``tools/call``; returns the created task."""
    task = {} if ttl is None else {"ttl": ttl}
    result = await client.call_tool(
        name, arguments, task=task, progress_token=progress_token
    )
    return created_task(result)


async def rpc_error(call: Callable[[], Any]) -> RpcError:
    """Await ``call()`` and return the `RpcError` it must raise."""
    try:
        await call()
    except RpcError as exc:
        return exc
    raise AssertionError("expected a JSON-RPC error response")


async def wait_notification(
    client: TaskClient,
    method: str,
    matches: Callable[[JSONObject], bool],
) -> JSONObject:
    """The first ``method`` notification whose params match, waiting (bounded).

    Looks at everything received so far first, so the notification may have
    arrived before the call; then waits for new ones, event-driven.
    """
    with anyio.fail_after(TIMEOUT):
        for notification in list(client.notifications):
            params = obj(notification["params"])
            if notification["method"] == method and matches(params):
                return params
        while True:
            notification = await client.next_notification(method)
            params = obj(notification["params"])
            if matches(params):
                return params
