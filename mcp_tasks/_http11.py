"""A lean HTTP/1.1 transport for httpx: kept-alive plain-HTTP connections.

Why it exists: with httpx's default transport (httpcore) a third of the
client's CPU per MCP request went to the connection pool and its h11 state
machine (a py-spy profile of the end-to-end benchmark's clients: 32 % under
``AsyncConnectionPool.handle_async_request``). An MCP client sends small
JSON-RPC POSTs one after another; what it needs from HTTP/1.1 is little: write
the request, read the status and headers, read a body framed by
``Content-Length``, by chunks or by the connection's end, and keep the
connection for the next request when the exchange allows it.

Scope, and why: only ``http://`` URLs are served here. Everything else
(``https://``, whose TLS setup and certificate store are httpx's business)
goes to the fallback transport, httpx's own. No request is ever retried: a
POST may start a task, and sending it twice could start two. Instead a kept
connection is checked before reuse, as httpcore does: one the server has
closed (or sent anything unasked on) is dropped, not written to.
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterator
from typing import Final, Literal, TypeAlias

import anyio
import anyio.abc
import httpx2

__all__ = ["Http11Transport"]

# Bounds on what a server may send before its body: a status line and headers
# longer than this are refused rather than buffered without end.
_MAX_HEAD_BYTES: Final = 64 * 1024
# One receive reads at most this much.
_READ_SIZE: Final = 64 * 1024
# Kept connections per origin; more are closed when released.
_MAX_IDLE_PER_ORIGIN: Final = 16
# Statuses whose responses never have a body (RFC 9112 §6.3).
_NO_BODY_STATUSES: Final = frozenset({204, 304})

_Origin: TypeAlias = tuple[str, int]
_Headers: TypeAlias = list[tuple[bytes, bytes]]


class _Connection:
    """One TCP connection with its read buffer."""

    __slots__ = ("buffer", "fd", "origin", "stream")

    def __init__(self, stream: anyio.abc.SocketStream, origin: _Origin) -> None:
        self.stream = stream
        self.origin = origin
        self.buffer = bytearray()
        # Looked up once: anyio's attribute lookup is dear on every reuse.
        self.fd = stream.extra(anyio.abc.SocketAttribute.raw_socket).fileno()

    def reusable(self) -> bool:
        """False once the server has closed the connection or sent unasked data.

        A kept connection should be silent; if its socket is readable, what is
        waiting is either the end of the stream or bytes no request asked for,
        and neither leaves the connection usable.
        """
        if self.buffer:
            return False
        try:
            return not _readable(self.fd)
        except (OSError, ValueError):
            return False

    async def receive(self, max_wait: float | None, request: httpx2.Request) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        try:
            with anyio.fail_after(max_wait):
                data = await self.stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            return False
        except _IO_FAILURES as exc:
            raise _transport_error(exc, request, "read") from exc
        self.buffer += data
        return True

    async def send(
        self, data: bytes, max_wait: float | None, request: httpx2.Request
    ) -> None:
        try:
            with anyio.fail_after(max_wait):
                await self.stream.send(data)
        except _IO_FAILURES as exc:
            raise _transport_error(exc, request, "write") from exc

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


# What connecting, reading or writing can fail with (a timeout, a refused, lost
# or closed connection); each is handed to httpx as its own transport error.
_IO_FAILURES: Final = (
    TimeoutError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)

_Step: TypeAlias = Literal["connect", "read", "write"]
# Per step: httpx's error for a timeout, for any other failure, and what timed out.
_STEP_ERRORS: Final[
    dict[_Step, tuple[type[httpx2.TimeoutException], type[httpx2.NetworkError], str]]
] = {
    "connect": (httpx2.ConnectTimeout, httpx2.ConnectError, "connecting to"),
    "read": (httpx2.ReadTimeout, httpx2.ReadError, "reading the response from"),
    "write": (httpx2.WriteTimeout, httpx2.WriteError, "writing the request to"),
}


def _transport_error(
    error: BaseException, request: httpx2.Request, step: _Step
) -> httpx2.TransportError:
    timed_out, failed, doing = _STEP_ERRORS[step]
    if isinstance(error, TimeoutError):
        url = request.url
        where = f"{url.host}:{url.port or 80}"
        return timed_out(f"timed out {doing} {where}", request=request)
    return failed(str(error) or type(error).__name__, request=request)


def _readable(fd: int) -> bool:
    """Whether reading ``fd`` would not block, without waiting."""
    if hasattr(select, "poll"):  # any descriptor number (select() stops at 1024)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


class _Head:
    """A response's status line and headers, and what they say about the body."""

    __slots__ = ("chunked", "headers", "keep_alive", "length", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, headers: _Headers, http11: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        connection_tokens: set[bytes] = set()
        lengths: set[bytes] = set()
        self.chunked = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))
            elif lowered == b"content-length":
                lengths.add(value.strip())
            elif lowered == b"transfer-encoding":
                self.chunked = value.lower().rstrip().endswith(b"chunked")
        if http11:
            self.keep_alive = b"close" not in connection_tokens
        else:
            self.keep_alive = b"keep-alive" in connection_tokens
        self.length: int | None = None
        if not self.chunked and lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise httpx2.RemoteProtocolError(
                    f"invalid Content-Length: {sorted(lengths)!r}"
                )
            self.length = int(next(iter(lengths)))


def _parse_head(raw: bytes) -> _Head:
    lines = raw.split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx2.RemoteProtocolError(
            f"malformed status line: {status_line[:100]!r}"
        )
    headers: _Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in b" \t":
            raise httpx2.RemoteProtocolError(f"malformed header line: {line[:100]!r}")
        headers.append((name, value.strip()))
    reason = parts[2] if len(parts) == 3 else b""
    return _Head(int(parts[1]), reason, headers, http11=parts[0] == b"HTTP/1.1")


class _Body(httpx2.AsyncByteStream):
    """A response body read off its connection; the connection goes back to the
    pool when the body has been read to its end and the server allows reuse."""

    def __init__(
        self,
        transport: Http11Transport,
        connection: _Connection,
        head: _Head,
        request: httpx2.Request,
        *,
        empty: bool,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._head = head
        self._request = request
        self._empty = empty
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx2.StreamClosed()
        try:
            if self._empty:
                pass
            elif self._head.chunked:
                async for chunk in self._chunks(connection):
                    yield chunk
            elif self._head.length is not None:
                async for chunk in self._sized(connection, self._head.length):
                    yield chunk
            else:
                async for chunk in self._until_close(connection):
                    yield chunk
        except BaseException:
            await self.aclose()
            raise
        # Read to the end: the connection can serve the next request.
        self._connection = None
        if self._head.keep_alive and (
            self._head.chunked or self._head.length is not None or self._empty
        ):
            await self._transport.release(connection)
        else:
            await connection.aclose()

    async def _sized(
        self, connection: _Connection, length: int
    ) -> AsyncIterator[bytes]:
        remaining = length
        while remaining:
            if not connection.buffer and not await connection.receive(
                self._timeout, self._request
            ):
                raise httpx2.RemoteProtocolError(
                    f"the server closed the connection {remaining} bytes before the body's end"
                )
            take = min(remaining, len(connection.buffer))
            chunk = bytes(connection.buffer[:take])
            del connection.buffer[:take]
            remaining -= take
            yield chunk

    async def _until_close(self, connection: _Connection) -> AsyncIterator[bytes]:
        while True:
            if connection.buffer:
                chunk = bytes(connection.buffer)
                connection.buffer.clear()
                yield chunk
            if not await connection.receive(self._timeout, self._request):
                return

    async def _line(self, connection: _Connection) -> bytes:
        while (end := connection.buffer.find(b"\r\n")) < 0:
            if len(connection.buffer) > _MAX_HEAD_BYTES:
                raise httpx2.RemoteProtocolError("a chunk header line is too long")
            if not await connection.receive(self._timeout, self._request):
                raise httpx2.RemoteProtocolError(
                    "the server closed the connection inside a chunked body"
                )
        line = bytes(connection.buffer[:end])
        del connection.buffer[: end + 2]
        return line

    async def _chunks(self, connection: _Connection) -> AsyncIterator[bytes]:
        while True:
            size_field = (await self._line(connection)).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise httpx2.RemoteProtocolError(
                    f"malformed chunk size: {size_field[:40]!r}"
                ) from None
            if size == 0:
                while await self._line(connection):  # trailers, up to the empty line
                    pass
                return
            async for piece in self._sized(connection, size):
                yield piece
            if await self._line(connection):
                raise httpx2.RemoteProtocolError("a chunk does not end with CRLF")

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Closed before its end: what is left unread makes it unusable.
            await connection.aclose()


class Http11Transport(httpx2.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 with kept-alive connections for ``http://``.

    Other schemes go to ``fallback`` (by default httpx's own transport, made
    on first use: it loads a certificate store, which takes milliseconds).
    """

    def __init__(self, fallback: httpx2.AsyncBaseTransport | None = None) -> None:
        self._fallback = fallback
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False
        #: Connections opened so far (for tests and diagnostics).
        self.connections_opened = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx2.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        if self._closed:
            raise httpx2.ConnectError("the transport is closed", request=request)
        timeouts = request.extensions.get("timeout", {})
        origin: _Origin = (url.host, url.port or 80)
        connection = await self._connection(origin, timeouts.get("connect"), request)
        try:
            await connection.send(
                _encode(request, await request.aread()), timeouts.get("write"), request
            )
            head = await _read_head(connection, timeouts.get("read"), request)
        except BaseException:
            await connection.aclose()
            raise
        empty = request.method == "HEAD" or head.status in _NO_BODY_STATUSES
        body = _Body(
            self,
            connection,
            head,
            request,
            empty=empty,
            read_timeout=timeouts.get("read"),
        )
        return httpx2.Response(
            head.status,
            headers=head.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def _connection(
        self, origin: _Origin, max_wait: float | None, request: httpx2.Request
    ) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.reusable():
                return connection
            await connection.aclose()
        try:
            with anyio.fail_after(max_wait):
                stream = await anyio.connect_tcp(*origin)
        except _IO_FAILURES as exc:
            raise _transport_error(exc, request, "connect") from exc
        self.connections_opened += 1
        return _Connection(stream, origin)

    async def release(self, connection: _Connection) -> None:
        """Keep ``connection`` for the next request to its origin, if room remains."""
        idle = self._idle.setdefault(connection.origin, [])
        if self._closed or len(idle) >= _MAX_IDLE_PER_ORIGIN:
            await connection.aclose()
        else:
            idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True
        idle = [c for kept in self._idle.values() for c in kept]
        self._idle.clear()
        for connection in idle:
            await connection.aclose()
        if self._fallback is not None:
            await self._fallback.aclose()


def _encode(request: httpx2.Request, body: bytes) -> bytes:
    """The request's head and body as sent: httpx has set Host and the framing."""
    url = request.url
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding":
            chunked = True
        lines.append(b"%s: %s" % (name, value))
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if chunked:  # a streamed body, read whole above: one chunk and the last
        return (
            head + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        )
    return head + body


async def _read_head(
    connection: _Connection, max_wait: float | None, request: httpx2.Request
) -> _Head:
    while True:
        end = connection.buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(connection.buffer) > _MAX_HEAD_BYTES:
                raise httpx2.RemoteProtocolError("the response's headers are too long")
            if not await connection.receive(max_wait, request):
                raise httpx2.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
            end = connection.buffer.find(b"\r\n\r\n")
        head = _parse_head(bytes(connection.buffer[:end]))
        del connection.buffer[: end + 4]
        # Interim answers (100 Continue, 103 Early Hints) precede the real one.
        if not 100 <= head.status < 200:
            return head
