"""Subprocess servers and client helpers for the human-in-the-loop e2e tests.

Every server here is a real ``python -m mcp_tasks serve`` process with its
journal under the test's temporary directory, serving ``tools/ask.py`` and
``hitl_tools.py``. HTTP servers listen on port 0 and are ready once they log
the port they got (``listening on ...``, awaited with a deadline); stdio
servers are spawned by `TaskClient.stdio` itself. Server output goes to a log
file next to the journal, whose tail is shown when a server fails to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
from anyio.abc import Process

from mcp_tasks.client import JSONObject, RpcError, TaskClient

from .support import LogWatch, ServerOutput

REPO: Final = Path(__file__).resolve().parents[2]
ASK_TOOL: Final = REPO / "tools" / "ask.py"
HITL_TOOLS: Final = Path(__file__).with_name("hitl_tools.py")

#: Bound on any single wait in these tests.
TIMEOUT: Final = 20.0
#: Bound on a server becoming ready (interpreter start-up included).
START_TIMEOUT: Final = 30.0
#: Bound on a server exiting after SIGTERM before it is killed.
STOP_TIMEOUT: Final = 15.0

ELICITATION: Final[JSONObject] = {"elicitation": {"form": {}}}
RELATED_TASK: Final = "io.modelcontextprotocol/related-task"
ELICIT: Final = "elicitation/create"
METHOD_NOT_FOUND: Final = -32601


def token_of(owner: str) -> str:
    """The bearer token of ``owner`` in the token files written here."""
    return f"{owner}-bearer-token-0123456789"


@dataclass(frozen=True, slots=True)
class ServerSetup:
    """The files one server uses: journal, config, tokens and log."""

    db: Path
    config: Path
    tokens: Path
    log: Path

    def command(self, http: tuple[str, int] | None = None) -> list[str]:
        """The ``mcp-tasks serve`` command line (stdio unless ``http``)."""
        command = [sys.executable, "-m", "mcp_tasks", "serve", "--db", str(self.db)]
        command += ["--config", str(self.config)]
        command += ["--tools", str(ASK_TOOL), "--tools", str(HITL_TOOLS)]
        if http is not None:
            command += ["--http", f"{http[0]}:{http[1]}", "--tokens", str(self.tokens)]
        return command


def server_setup(
    directory: Path,
    *,
    owners: Iterable[str] = ("alice",),
    workers: int = 4,
    poll_interval_seconds: float = 0.05,
) -> ServerSetup:
    """Write a config (small poll interval) and a token file under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.toml"
    config.write_text(
        "[limits]\n"
        f"workers = {workers}\n"
        f"poll_interval_seconds = {poll_interval_seconds}\n"
        "shutdown_grace_seconds = 2\n",
        encoding="utf-8",
    )
    tokens = directory / "tokens.toml"
    tokens.write_text(
        "".join(
            f'[[client]]\nid = "{owner}"\ntoken = "{token_of(owner)}"\n\n'
            for owner in owners
        ),
        encoding="utf-8",
    )
    return ServerSetup(directory / "tasks.db", config, tokens, directory / "server.log")


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a server log (for failure messages)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class HttpServer:
    """A running ``mcp-tasks serve --http`` subprocess; ``log`` watches its output."""

    def __init__(
        self, process: Process, port: int, setup: ServerSetup, log: LogWatch
    ) -> None:
        self.process = process
        self.port = port
        self.setup = setup
        self.log = log
        self.url = f"http://127.0.0.1:{port}/mcp"

    def client(
        self, owner: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[TaskClient]:
        """A `TaskClient` session authenticated as ``owner``."""
        return TaskClient.http(self.url, token=token_of(owner), **kwargs)

    async def kill(self) -> None:
        """``kill -9`` the server and reap it."""
        self.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(STOP_TIMEOUT):
            await self.process.wait()


async def _listening_port(output: ServerOutput, log: Path) -> int:
    """The port from the server's ``listening on`` line (waited for, bounded)."""
    try:
        port = await anyio.to_thread.run_sync(output.port, START_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(
            f"server not listening after {START_TIMEOUT:g} s:\n{log_tail(log)}"
        ) from None
    if port is None:
        raise RuntimeError(f"server exited before listening:\n{log_tail(log)}")
    return port


async def _stop(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


@asynccontextmanager
async def http_server(setup: ServerSetup) -> AsyncGenerator[HttpServer]:
    """Start the server over HTTP on port 0; stop it on exit."""
    read_end, write_end = os.pipe()
    try:
        process = await anyio.open_process(
            setup.command(("127.0.0.1", 0)),
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            cwd=REPO,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    watch = LogWatch()
    output = ServerOutput(os.fdopen(read_end, "rb"), setup.log, watch)
    try:
        port = await _listening_port(output, setup.log)
        yield HttpServer(process, port, setup, watch)
    finally:
        await _stop(process)
        await anyio.to_thread.run_sync(output.join)


@asynccontextmanager
async def stdio_client(
    setup: ServerSetup, *, watch: LogWatch | None = None, **kwargs: Any
) -> AsyncGenerator[TaskClient]:
    """Spawn the server over stdio and connect a `TaskClient` to it.

    The server's stderr goes through a pipe to its log file and to ``watch``.
    """
    read_end, write_end = os.pipe()
    output = ServerOutput(os.fdopen(read_end, "rb"), setup.log, watch)
    with os.fdopen(write_end, "w", encoding="utf-8") as errlog:
        async with TaskClient.stdio(
            setup.command(),
            cwd=REPO,
            errlog=errlog,
            **kwargs,
        ) as client:
            errlog.close()  # the server holds its own end; EOF comes when it exits
            yield client
    await anyio.to_thread.run_sync(output.join)


# --------------------------------------------------------------- the client side

Reply = Callable[[JSONObject], Awaitable[JSONObject]]
"""Produces the answer to one ``elicitation/create`` (its params given)."""


class Elicitations:
    """An ``on_request`` handler: records each ``elicitation/create`` and answers it.

    ``reply`` decides the answer; the default holds the request open until the
    client closes (a user who never answers). Arrivals are counted so a test
    can wait for the n-th one without polling.
    """

    def __init__(self, reply: Reply | None = None) -> None:
        self.received: list[JSONObject] = []
        self._reply = reply or hold_forever
        self._arrival = anyio.Event()

    async def __call__(self, method: str, params: JSONObject) -> JSONObject:
        if method == "ping":
            return {}
        if method != ELICIT:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
        self.received.append(params)
        self._arrival.set()
        self._arrival = anyio.Event()
        return await self._reply(params)

    async def wait_for(self, count: int) -> list[JSONObject]:
        """Wait until ``count`` elicitations have arrived; return them all."""
        while len(self.received) < count:
            await self._arrival.wait()
        return list(self.received)

    def messages(self) -> list[str]:
        """The ``message`` of every elicitation received, in order."""
        return [str(params.get("message")) for params in self.received]


async def hold_forever(params: JSONObject) -> JSONObject:
    """Never answer (until the client closes and cancels the handler)."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


def answer_with(response: JSONObject) -> Reply:
    """Always answer ``response``."""

    async def reply(params: JSONObject) -> JSONObject:
        return response

    return reply


def related_task_of(params: Mapping[str, Any]) -> str | None:
    """The related-task id in a server request's ``_meta``, if any."""
    meta = params.get("_meta")
    if not isinstance(meta, Mapping):
        return None
    related = meta.get(RELATED_TASK)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if not isinstance(related, Mapping):
        return None
    task_id = related.get("taskId")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return task_id if isinstance(task_id, str) else None


def accept(**content: Any) -> JSONObject:
    """An ``ElicitResult`` accepting with ``content``."""
    return {"action": "accept", "content": content}


def text_of(result: Mapping[str, Any]) -> str:
    """The text of a ``CallToolResult``'s first content block."""
    content = result["content"]
    assert isinstance(content, list)
    assert content, "empty content"
    block = content[0]  # pyright: ignore[reportUnknownVariableType]
    assert isinstance(block, dict)
    text = block.get("text")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    assert isinstance(text, str)
    return text


def task_id_of(client: TaskClient, created: Mapping[str, Any]) -> str:
    """The id of the task a ``tools/call`` created (either wire)."""
    task = client.created_task(created)
    assert task is not None, f"expected a task, got {created!r}"
    task_id = task["taskId"]
    assert isinstance(task_id, str)
    return task_id
