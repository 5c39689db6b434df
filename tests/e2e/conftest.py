"""Fixtures that run REAL ``mcp-tasks serve`` subprocesses for the e2e tests.

Server start-up costs about a second, so the servers most tests share are
started once per session (HTTP, plain and with a token file) or once per
module (the stdio client, whose process lives as long as its connection).
Every server has its own journal under the session's temporary folder and
serves ``e2e_tools.py``; the ``gate`` tool of every one of them reports to and
waits on the same Unix socket, where the module's `EventHub` listens. Each
test makes its own gate keys, so tests never interfere, and every gate a test
made is released when it ends. HTTP servers listen on port 0 and are ready
once they log the port they got.

Finalizers always terminate the server processes (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Protocol

import anyio
import pytest

from mcp_tasks.client import TaskClient

from ..unix_streams import unix_listener
from .support import (
    ALICE_TOKEN,
    BOB_TOKEN,
    EventHub,
    Gates,
    HttpServer,
    ServerFiles,
    make_server_files,
    stdio_client,
)

#: Limits of the shared servers: small enough to test, large enough not to bite.
SHARED_LIMITS: dict[str, object] = {
    "workers": 16,
    "client_concurrency": 16,
    "default_ttl_seconds": 600,
    "max_ttl_seconds": 3600,
    "poll_interval_seconds": 0.5,
    "max_argument_bytes": 2048,
    "shutdown_grace_seconds": 0.2,
    "sweep_interval_seconds": 3600,
}
SHARED_TOKENS: list[dict[str, object]] = [
    {"id": "alice", "token": ALICE_TOKEN},
    {"id": "bob", "token": BOB_TOKEN},
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def e2e_root() -> Iterator[Path]:
    """A short temporary folder (Unix socket paths must stay under ~100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mcpt-e2e-") as root:
        yield Path(root)


@pytest.fixture(scope="session")
def events_path(e2e_root: Path) -> Path:
    return e2e_root / "events.sock"


class ServerFilesFactory(Protocol):
    def __call__(
        self,
        name: str,
        *,
        limits: dict[str, object] | None = None,
        tokens: list[dict[str, object]] | None = None,
        operators: list[dict[str, object]] | None = None,
        extra_toml: str = "",
    ) -> ServerFiles: ...


@pytest.fixture(scope="session")
def server_files(e2e_root: Path, events_path: Path) -> ServerFilesFactory:
    """A factory: config (and token) files for a server instance named ``name``.

    Limits default to `SHARED_LIMITS`; ``limits`` overrides some of them.
    """

    def make(
        name: str,
        *,
        limits: dict[str, object] | None = None,
        tokens: list[dict[str, object]] | None = None,
        operators: list[dict[str, object]] | None = None,
        extra_toml: str = "",
    ) -> ServerFiles:
        return make_server_files(
            e2e_root / name,
            events=events_path,
            limits={**SHARED_LIMITS, **(limits or {})},
            tokens=tokens,
            operators=operators or (),
            extra_toml=extra_toml,
        )

    return make


@pytest.fixture(scope="session")
def _shared_http(
    server_files: ServerFilesFactory,
) -> Iterator[tuple[HttpServer, HttpServer]]:
    """Both shared HTTP servers, launched together so their start-ups overlap."""
    plain = HttpServer(server_files("http"))
    auth = HttpServer(server_files("http-auth", tokens=SHARED_TOKENS))
    try:
        plain.launch()
        auth.launch()
        yield plain, auth
    finally:
        plain.stop()
        auth.stop()


@pytest.fixture(scope="session")
def http_server(_shared_http: tuple[HttpServer, HttpServer]) -> HttpServer:
    """The shared HTTP server without tokens (task ids are capabilities)."""
    _shared_http[0].ready()
    return _shared_http[0]


@pytest.fixture(scope="session")
def http_auth_server(_shared_http: tuple[HttpServer, HttpServer]) -> HttpServer:
    """The shared HTTP server with a token file: clients ``alice`` and ``bob``."""
    _shared_http[1].ready()
    return _shared_http[1]


@pytest.fixture(scope="session")
def stdio_files(server_files: ServerFilesFactory) -> ServerFiles:
    return server_files("stdio")


@pytest.fixture(scope="module")
async def hub(events_path: Path) -> AsyncGenerator[EventHub]:
    """Listens on the event socket of the ``gate`` tools for this module."""
    await anyio.Path(events_path).unlink(missing_ok=True)
    listener = await unix_listener(events_path)
    hub = EventHub()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.serve, listener)
        yield hub
        tg.cancel_scope.cancel()
    await anyio.Path(events_path).unlink(missing_ok=True)


@pytest.fixture(scope="module")
async def shared_stdio(
    stdio_files: ServerFiles,
    hub: EventHub,
    _shared_http: tuple[HttpServer, HttpServer],
) -> AsyncGenerator[TaskClient]:
    """One stdio server process (and its one client) for the whole module."""
    with stdio_files.log.open("a") as errlog:
        async with stdio_client(stdio_files, errlog) as client:
            yield client


@pytest.fixture
async def gates(hub: EventHub, request: pytest.FixtureRequest) -> AsyncGenerator[Gates]:
    """Gate keys for this test; all released at its end."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")
    gates = Gates(hub, name[-40:])
    try:
        yield gates
    finally:
        gates.release_all()


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    """The main flow runs over stdio and over plain HTTP."""
    return str(request.param)


@pytest.fixture
async def client(
    transport: str,
    _shared_http: tuple[HttpServer, HttpServer],
    shared_stdio: TaskClient,
    http_server: HttpServer,
    http_auth_server: HttpServer,
) -> AsyncGenerator[TaskClient]:
    """A 2025-11-25 client of the shared server for ``transport``.

    ``stdio``: the module's shared stdio connection. ``http``: a new session on
    the shared token-less server. ``http-auth``: a new session of ``alice`` on
    the shared server with tokens.
    """
    if transport == "stdio":
        yield shared_stdio
        return
    server, token = (
        (http_server, None) if transport == "http" else (http_auth_server, ALICE_TOKEN)
    )
    async with TaskClient.http(server.url, token=token) as http:
        yield http
