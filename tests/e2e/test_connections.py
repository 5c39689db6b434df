"""Connection floods against a real ``mcp-tasks serve --http`` process.

Each flood connection sends half a request head and then nothing, as a
slow-loris client or a stuck proxy does. The server must stay reachable for a
normal client, hold no more connections than its limit (configured, or what
its open-files limit allows), close connections that never finish their head,
and say so in its log once per flood rather than once per connection.

Some servers here start under a low open-files limit, set by a small wrapper
that calls ``setrlimit`` and then execs the server.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Generator
from contextlib import contextmanager

import anyio
import anyio.abc
import pytest

from mcp_tasks.client import TaskClient

from .conftest import ServerFilesFactory
from .support import TIMEOUT, HttpServer, obj

pytestmark = pytest.mark.timeout(90)

#: The start of a request whose head never ends.
HALF_SENT = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application"
#: A complete request head whose body never comes; the server asks for it
#: ("100 Continue"), so the client knows the connection is busy with a request.
BUSY_HEAD = (
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n"
    b"Expect: 100-continue\r\n\r\n"
)
FLOOD_LINE = "connection flood:"
#: Runs argv[3:] with the open-files limit set to (argv[1], argv[2]).
WITH_FILE_LIMIT = [
    sys.executable,
    "-c",
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.argv[3], sys.argv[3:])",
]


@contextmanager
def flood(port: int, count: int) -> Generator[list[socket.socket]]:
    """``count`` connections, each holding half a request head; closed on exit.

    Plain blocking sockets: a loopback connect completes in the kernel's
    backlog at once, whether or not the server has accepted it yet.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sockets.append(sock)
            sock.sendall(HALF_SENT)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed ``sock`` (it never answers these).

    Asked after a normal client was served: the server accepted every flood
    connection before that client's, so it has closed all it was going to.
    """
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


async def echo_once(server: HttpServer) -> str:
    """A normal client's whole session: handshake, one call, goodbye."""
    with anyio.fail_after(TIMEOUT):
        async with TaskClient.http(server.url) as client:
            result = await client.call_tool("echo", {"text": "still here"})
    return str(obj(result["structuredContent"])["text"])


async def read_to_end(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends on ``stream`` until it closes it."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return data


@pytest.fixture(params=["h11", "httptools"])
def parser(request: pytest.FixtureRequest) -> str:
    """Both of uvicorn's HTTP parsers run under the guard (``[http] parser``)."""
    return str(request.param)


def http_toml(parser: str, settings: str = "") -> str:
    return f'[http]\nparser = "{parser}"\n{settings}'


def stopped_log(server: HttpServer) -> str:
    """Stop ``server`` (SIGTERM) and return its complete log."""
    assert server.stop() == 0
    return server.log_text()


async def test_a_flood_beyond_the_connection_limit_leaves_the_server_reachable(
    server_files: ServerFilesFactory, parser: str
) -> None:
    files = server_files(
        f"flood-limit-{parser}",
        extra_toml=http_toml(
            parser, "max_connections = 16\nheader_timeout_seconds = 60\n"
        ),
    )
    server = HttpServer(files)
    try:
        server.start()
        with flood(server.port, 64) as sockets:
            assert await echo_once(server) == "still here"
            open_now = [still_open(s) for s in sockets]
        # The oldest half-sent connections made room for the client (at least
        # one connection); the newest are still held.
        assert sum(open_now) < 16
        assert open_now[-4:] == [True] * 4
    finally:
        log = stopped_log(server)
    assert log.count(FLOOD_LINE) == 1, log
    assert "Too many open files" not in log


async def test_when_every_connection_is_busy_a_new_one_gets_503(
    server_files: ServerFilesFactory, parser: str
) -> None:
    server = HttpServer(
        server_files(
            f"flood-busy-{parser}",
            extra_toml=http_toml(parser, "max_connections = 4\n"),
        )
    )
    busy: list[anyio.abc.SocketStream] = []
    try:
        server.start()
        with anyio.fail_after(TIMEOUT):
            for _ in range(4):
                stream = await anyio.connect_tcp("127.0.0.1", server.port)
                busy.append(stream)
                await stream.send(BUSY_HEAD)
                assert (await stream.receive()).startswith(b"HTTP/1.1 100 ")
            async with await anyio.connect_tcp("127.0.0.1", server.port) as extra:
                answer = await read_to_end(extra)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    finally:
        for stream in busy:
            await stream.aclose()
        log = stopped_log(server)
    assert log.count(FLOOD_LINE) == 1, log


async def test_a_connection_that_never_finishes_its_request_is_closed(
    server_files: ServerFilesFactory, parser: str
) -> None:
    files = server_files(
        f"flood-timeout-{parser}",
        extra_toml=http_toml(parser, "header_timeout_seconds = 0.5\n"),
    )
    server = HttpServer(files)
    try:
        server.start()
        with anyio.fail_after(TIMEOUT):
            for _ in range(3):
                async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
                    await stream.send(HALF_SENT)
                    # Bytes after the deadline started do not extend it.
                    await stream.send(b"/json\r\n")
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await stream.receive()
        assert await echo_once(server) == "still here"
    finally:
        log = stopped_log(server)
    assert FLOOD_LINE not in log


async def test_a_flood_of_malformed_requests_is_logged_once(
    server_files: ServerFilesFactory, parser: str
) -> None:
    server = HttpServer(
        server_files(f"flood-garbage-{parser}", extra_toml=http_toml(parser))
    )
    try:
        server.start()
        with anyio.fail_after(TIMEOUT):
            for _ in range(30):
                async with await anyio.connect_tcp("127.0.0.1", server.port) as bad:
                    await bad.send(b"NOT HTTP AT ALL\r\n\r\n")
                    assert (await read_to_end(bad)).startswith(b"HTTP/1.1 400 ")
        assert await echo_once(server) == "still here"
    finally:
        log = stopped_log(server)
    assert log.count("Invalid HTTP request received") == 1, log


async def test_the_default_limit_fits_a_low_open_files_limit(
    server_files: ServerFilesFactory,
) -> None:
    # 256 descriptors cannot hold the default 1000 connections: the server
    # allows fewer (and says so once) instead of failing every accept.
    server = HttpServer(
        server_files("flood-rlimit"), wrapper=[*WITH_FILE_LIMIT, "256", "256"]
    )
    try:
        server.start()
        with flood(server.port, 300):
            assert await echo_once(server) == "still here"
    finally:
        log = stopped_log(server)
    assert "does not fit the open-files limit 256" in log
    assert log.count(FLOOD_LINE) == 1, log
    assert "Too many open files" not in log


async def test_the_soft_open_files_limit_is_raised_at_start_up(
    server_files: ServerFilesFactory,
) -> None:
    # Soft 256, hard 2048: raised at start-up, so 400 connections all fit.
    server = HttpServer(
        server_files("flood-raise"), wrapper=[*WITH_FILE_LIMIT, "256", "2048"]
    )
    try:
        server.start()
        with flood(server.port, 400) as sockets:
            assert await echo_once(server) == "still here"
            assert all(still_open(s) for s in sockets)
    finally:
        log = stopped_log(server)
    assert FLOOD_LINE not in log
    assert "Too many open files" not in log
