"""Helpers for the end-to-end tests: server processes, gates, events, JSON access.

Nothing here sleeps to synchronise. The one retry loop is `HttpServer.start`
waiting for the port to accept connections, bounded by a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, cast

import anyio
from anyio.abc import SocketListener, SocketStream

from mcp_tasks.client import JSONObject, RpcError, TaskClient

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
            "--log-level",
            "WARNING",
        ]
        if http is not None:
            argv += ["--http", f"{http[0]}:{http[1]}"]
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
    gates: Path,
    events: Path,
    limits: Mapping[str, object] | None = None,
    tokens: Sequence[Mapping[str, object]] | None = None,
    extra_toml: str = "",
) -> ServerFiles:
    """Write a config (and token) file for one server instance under ``root``.

    ``extra_toml`` is appended to the config verbatim (e.g. ``[clients.x]``).
    """
    root.mkdir(parents=True, exist_ok=True)
    lines = ["[limits]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in (limits or {}).items()]
    lines += [
        "",
        "[tools.gate]",
        f"dir = {_toml_value(str(gates))}",
        f"events = {_toml_value(str(events))}",
    ]
    config = root / "config.toml"
    config.write_text("\n".join(lines) + "\n" + extra_toml)
    token_file = None
    if tokens is not None:
        token_file = root / "tokens.toml"
        entries = [
            "[[client]]\n"
            + "".join(f"{key} = {_toml_value(value)}\n" for key, value in entry.items())
            for entry in tokens
        ]
        token_file.write_text("\n".join(entries))
    return ServerFiles(
        root=root, config=config, db=root / "tasks.db", tokens=token_file
    )


# ------------------------------------------------------------------- servers


def free_port() -> int:
    """A loopback port that was free a moment ago (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class HttpServer:
    """``mcp-tasks serve --http`` as a subprocess on a free loopback port."""

    files: ServerFiles
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The MCP endpoint."""
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        """Start the process; return once its port accepts connections."""
        self.launch()
        self.ready()

    def launch(self) -> None:
        """Start the process on a free port (without waiting for it)."""
        assert self.process is None, "already running"
        self.port = free_port()
        self._log = self.files.log.open("ab")
        self.process = subprocess.Popen(
            self.files.argv(("127.0.0.1", self.port)),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=self.files.root,
        )

    def ready(self) -> None:
        """Return once the port accepts connections (retrying, bounded)."""
        assert self.process is not None, "not launched"
        deadline = time.monotonic() + TIMEOUT
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"server exited with {code} before listening:\n{self.log_text()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"server not listening on {self.port}") from None
                time.sleep(0.02)  # the retry pause of a bounded readiness poll
            else:
                return

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server process."""
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = EXIT_WAIT) -> int:
        """Wait for the process to exit; return its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

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
        if self._log is not None:
            self._log.close()
            self._log = None
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
    """Collects the ``gate`` tool's event lines from its Unix socket.

    Each line is ``<kind> <key> <attempt>``; `wait` returns once that event
    arrived (or already had), for any attempt or for the given one.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, int | None], anyio.Event] = {}
        self.received: list[tuple[str, str, int]] = []

    def _event(self, kind: str, key: str, attempt: int | None) -> anyio.Event:
        return self._events.setdefault((kind, key, attempt), anyio.Event())

    def seen(self, kind: str, key: str, attempt: int | None = None) -> bool:
        """Whether ``kind`` happened for ``key`` (on ``attempt``, if given)."""
        return self._event(kind, key, attempt).is_set()

    async def wait(self, kind: str, key: str, attempt: int | None = None) -> None:
        """Wait (bounded) until the gate body for ``key`` reported ``kind``."""
        with anyio.fail_after(TIMEOUT):
            await self._event(kind, key, attempt).wait()

    async def serve(self, listener: SocketListener) -> None:
        """Accept event connections until cancelled."""
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        data = b""
        async with stream:
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        for line in data.decode().splitlines():
            kind, key, attempt = line.split()
            self.received.append((kind, key, int(attempt)))
            self._event(kind, key, None).set()
            self._event(kind, key, int(attempt)).set()


class Gates:
    """Unique gate keys for one test, released (file created) on demand or at the end."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.keys: list[str] = []

    def key(self) -> str:
        """A fresh key no other test uses."""
        key = f"{self.prefix}-{len(self.keys)}-{os.urandom(4).hex()}"
        self.keys.append(key)
        return key

    def release(self, key: str) -> None:
        """Let the ``gate`` body waiting on ``key`` (now or later) return."""
        (self.directory / key).touch()

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
