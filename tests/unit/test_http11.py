"""The client's HTTP/1.1 transport against a scripted server on a real socket.

The server reads each request whole and answers with the bytes the test
scripted for it, so every framing the transport must handle (length, chunks,
the connection's end, interim answers) is exercised byte for byte, and the
server counts the connections it accepted: keep-alive is seen from outside.
"""

from __future__ import annotations

import os
import resource
import select
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import httpx2
import pytest

from mcp_tasks._http11 import Http11Transport

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0


@dataclass
class Received:
    """A request as the server read it."""

    head: bytes
    body: bytes
    connection: int


@dataclass
class ScriptedServer:
    """Answers the n-th request with ``answers[n]``; closes after it if asked."""

    answers: list[bytes]
    close_after: set[int] = field(default_factory=lambda: set[int]())
    received: list[Received] = field(default_factory=lambda: list[Received]())
    accepted: int = 0
    port: int = 0
    closed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        connection = self.accepted
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive()
                body, buffer = buffer[:length], buffer[length:]
                index = len(self.received)
                self.received.append(Received(head, body, connection))
                if index >= len(self.answers):
                    return  # no answer scripted: hang up without one
                await stream.send(self.answers[index])
                if index in self.close_after:
                    await stream.aclose()
                    self.closed.set()
                    return


def ok(body: bytes, *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        headers,
        body,
    )


class Listeners:
    """Loopback listeners served in a task group; all closed at teardown."""

    def __init__(
        self,
        tg: anyio.abc.TaskGroup,
        opened: list[anyio.abc.Listener[anyio.abc.SocketStream]],
    ) -> None:
        self._tg = tg
        self.opened = opened

    async def listen(
        self, handler: Callable[[anyio.abc.SocketStream], Awaitable[None]]
    ) -> int:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.opened.append(listener)
        self._tg.start_soon(listener.serve, handler)
        return listener.extra(anyio.abc.SocketAttribute.local_port)

    async def start(self, server: ScriptedServer) -> ScriptedServer:
        server.port = await self.listen(server.serve)
        return server


@pytest.fixture
async def listeners() -> AsyncGenerator[Listeners]:
    listeners: list[anyio.abc.Listener[anyio.abc.SocketStream]] = []
    try:
        async with anyio.create_task_group() as tg:
            opened = Listeners(tg, listeners)
            yield opened
            tg.cancel_scope.cancel()
    finally:
        # After the task group: closing a listener under its serve() fails it.
        for listener in listeners:
            await listener.aclose()


def client(transport: Http11Transport) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=transport, timeout=TIMEOUT)


async def test_sequential_requests_share_one_kept_connection(
    listeners: Listeners,
) -> None:
    server = await listeners.start(
        ScriptedServer([ok(b'{"n":1}'), ok(b'{"n":2}'), ok(b'{"n":3}')])
    )
    transport = Http11Transport()
    async with client(transport) as http:
        for n in (1, 2, 3):
            answer = await http.post(server.url, content=b'{"ask":%d}' % n)
            assert answer.status_code == 200
            assert answer.json() == {"n": n}
    assert server.accepted == 1
    assert transport.connections_opened == 1
    assert [r.body for r in server.received] == [
        b'{"ask":1}',
        b'{"ask":2}',
        b'{"ask":3}',
    ]
    assert [r.connection for r in server.received] == [1, 1, 1]
    first = server.received[0].head
    assert first.startswith(b"POST /mcp HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d" % server.port in first
    assert b"\r\nContent-Length: 9" in first


async def test_a_chunked_body_is_joined_and_the_connection_kept(
    listeners: Listeners,
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: text/event-stream\r\n\r\n"
        b"6;ext=1\r\nevent:\r\n"  # a chunk extension is ignored
        b'10\r\n data: {"x": 1}\n\r\n'
        b"0\r\nTrailer-Field: yes\r\n\r\n"
    )
    server = await listeners.start(ScriptedServer([chunked, ok(b"after")]))
    transport = Http11Transport()
    async with client(transport) as http:
        answer = await http.post(server.url, content=b"{}")
        assert answer.content == b'event: data: {"x": 1}\n'
        assert (await http.post(server.url, content=b"{}")).content == b"after"
    assert server.accepted == 1


async def test_a_body_ending_with_the_connection_is_read_whole_and_not_kept(
    listeners: Listeners,
) -> None:
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    server = await listeners.start(
        ScriptedServer([until_close, ok(b"next")], close_after={0})
    )
    transport = Http11Transport()
    async with client(transport) as http:
        assert (await http.get(server.url)).content == b"all of it"
        assert (await http.get(server.url)).content == b"next"
    assert server.accepted == 2


@pytest.mark.parametrize(
    ("status_line", "extra"),
    [
        (b"HTTP/1.1 200 OK", b"Connection: close\r\n"),
        (b"HTTP/1.0 200 OK", b""),
    ],
)
async def test_a_connection_the_server_will_close_is_not_kept(
    listeners: Listeners, status_line: bytes, extra: bytes
) -> None:
    closing = status_line + b"\r\nContent-Length: 2\r\n" + extra + b"\r\nhi"
    server = await listeners.start(ScriptedServer([closing, ok(b"again")]))
    transport = Http11Transport()
    async with client(transport) as http:
        assert (await http.get(server.url)).content == b"hi"
        assert (await http.get(server.url)).content == b"again"
    assert server.accepted == 2
    assert transport.connections_opened == 2


async def test_a_kept_connection_the_server_closed_is_dropped_before_reuse(
    listeners: Listeners,
) -> None:
    # The server answers with a length (so the client keeps the connection)
    # and then hangs up, as servers do when a kept connection idles too long.
    server = await listeners.start(
        ScriptedServer([ok(b"one"), ok(b"two")], close_after={0})
    )
    transport = Http11Transport()
    async with client(transport) as http:
        assert (await http.post(server.url, content=b"1")).content == b"one"
        await server.closed.wait()
        # Wait (without sleeping) until the hang-up has reached our socket.
        [kept] = [c for idle in transport._idle.values() for c in idle]  # pyright: ignore[reportPrivateUsage]
        fd = kept.stream.extra(anyio.abc.SocketAttribute.raw_socket).fileno()
        hung_up = select.poll()
        hung_up.register(fd, select.POLLIN)
        assert hung_up.poll(TIMEOUT * 1000)
        assert (await http.post(server.url, content=b"2")).content == b"two"
    # The second request went on a new connection, not into the closed one.
    assert server.accepted == 2
    assert [r.body for r in server.received] == [b"1", b"2"]


async def test_a_body_closed_before_its_end_closes_its_connection(
    listeners: Listeners,
) -> None:
    partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    server = await listeners.start(ScriptedServer([partial, ok(b"fresh")]))
    transport = Http11Transport()
    async with client(transport) as http:
        async with http.stream("POST", server.url, content=b"{}") as answer:
            async for chunk in answer.aiter_raw():
                assert chunk == b"abc"
                break
        # The rest of the first body was never read: its connection is gone.
        assert (await http.post(server.url, content=b"{}")).content == b"fresh"
    assert server.accepted == 2


async def test_no_body_statuses_and_interim_answers(
    listeners: Listeners,
) -> None:
    answers = [
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
    ]
    server = await listeners.start(ScriptedServer(answers))
    async with client(Http11Transport()) as http:
        accepted = await http.post(server.url, content=b"{}")
        assert (accepted.status_code, accepted.content) == (202, b"")
        gone = await http.delete(server.url)
        assert (gone.status_code, gone.content) == (204, b"")
        last = await http.post(server.url, content=b"{}")
        assert (last.status_code, last.content) == (200, b"last")
        assert last.extensions["http_version"] == b"HTTP/1.1"
    assert server.accepted == 1


async def test_a_server_that_hangs_up_without_answering_is_a_protocol_error(
    listeners: Listeners,
) -> None:
    server = await listeners.start(ScriptedServer([]))
    async with client(Http11Transport()) as http:
        with pytest.raises(httpx2.RemoteProtocolError, match="without sending"):
            await http.post(server.url, content=b"{}")


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n", "malformed header line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
            "invalid Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "malformed chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY\r\n",
            "does not end with CRLF",
        ),
    ],
)
async def test_malformed_answers_are_protocol_errors(
    listeners: Listeners, answer: bytes, complaint: str
) -> None:
    server = await listeners.start(ScriptedServer([answer], close_after={0}))
    async with client(Http11Transport()) as http:
        with pytest.raises(httpx2.RemoteProtocolError, match=complaint):
            await http.post(server.url, content=b"{}")


async def test_a_body_cut_short_is_a_protocol_error(
    listeners: Listeners,
) -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly"
    server = await listeners.start(ScriptedServer([short], close_after={0}))
    async with client(Http11Transport()) as http:
        with pytest.raises(httpx2.RemoteProtocolError, match="6 bytes before"):
            await http.post(server.url, content=b"{}")


async def test_a_silent_server_is_a_read_timeout(
    listeners: Listeners,
) -> None:
    # Scripted to read the request and then wait for an answer that never comes.
    done = anyio.Event()

    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await done.wait()

    port = await listeners.listen(silent)
    timeout = httpx2.Timeout(TIMEOUT, read=0.05)
    async with httpx2.AsyncClient(transport=Http11Transport(), timeout=timeout) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.post(f"http://127.0.0.1:{port}/mcp", content=b"{}")
    done.set()


async def closed_port() -> int:
    """A loopback port nothing listens on any more."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    return port


async def test_a_refused_connection_is_a_connect_error() -> None:
    port = await closed_port()
    async with client(Http11Transport()) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post(f"http://127.0.0.1:{port}/mcp", content=b"{}")


class RecordingTransport(httpx2.AsyncBaseTransport):
    """A fallback that answers every request itself and remembers it."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.urls.append(str(request.url))
        return httpx2.Response(200, content=b"from the fallback")

    async def aclose(self) -> None:
        self.closed = True


async def test_other_schemes_go_to_the_fallback_transport() -> None:
    fallback = RecordingTransport()
    transport = Http11Transport(fallback)
    async with client(transport) as http:
        answer = await http.get("https://example.invalid/mcp")
        assert answer.content == b"from the fallback"
    assert fallback.urls == ["https://example.invalid/mcp"]
    assert fallback.closed
    assert transport.connections_opened == 0


async def test_without_a_fallback_https_goes_to_httpx_own_transport() -> None:
    port = await closed_port()
    transport = Http11Transport()
    async with client(transport) as http:
        # httpx's transport (made on this first https request) tries, and is refused.
        with pytest.raises(httpx2.ConnectError):
            await http.get(f"https://127.0.0.1:{port}/mcp")
    assert transport.connections_opened == 0


async def test_connections_past_descriptor_1024_are_kept_too(
    listeners: Listeners,
) -> None:
    # select() cannot watch descriptors past 1024; the reuse check must.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    held: list[int] = []
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        held.append(devnull)
        while len(held) < 1100:
            held.append(os.dup(devnull))
        server = await listeners.start(ScriptedServer([ok(b"1"), ok(b"2"), ok(b"3")]))
        transport = Http11Transport()
        async with client(transport) as http:
            for n in (b"1", b"2", b"3"):
                assert (await http.post(server.url, content=b"{}")).content == n
            [kept] = [c for idle in transport._idle.values() for c in idle]  # pyright: ignore[reportPrivateUsage]
            assert kept.fd > 1024
        assert server.accepted == 1
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
