"""A UNIX socket listener for the tests, on asyncio's transports.

The tests listen on UNIX sockets for reports from the tools their servers run.
anyio 4.16's own UNIX streams on asyncio wait for a readable socket with
``loop.add_reader(fd, future.set_result, None)``: when the socket turns
readable in the same loop iteration as the waiting task is cancelled (a
server killed at a test's end closes its tools' connections just as the test
stops listening), the queued callback sets a result on a cancelled future and
asyncio reports ``InvalidStateError`` from the loop, which fails the test at
random. asyncio's own ``start_unix_server`` reads through a protocol and has no
such race, so the listener here uses it and hands out anyio byte streams, and
the tests keep anyio's stream API (``BufferedByteReceiveStream`` and the like).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream, Listener, TaskGroup

#: Bytes read from the socket at most per `UnixStream.receive`.
READ_SIZE = 65536


class UnixStream(ByteStream):
    """One accepted connection, as an anyio byte stream."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        try:
            data = await self._reader.read(max_bytes)
        except ConnectionError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._writer.is_closing():
            raise anyio.ClosedResourceError
        try:
            self._writer.write(item)
            await self._writer.drain()
        except ConnectionError as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        self._writer.write_eof()

    def close_now(self) -> None:
        """Close the connection without waiting (idempotent)."""
        self._writer.close()

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass  # the peer is gone already: closed either way

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


class UnixListener(Listener[UnixStream]):
    """Accepts connections on a UNIX socket path (see the module docstring)."""

    def __init__(self) -> None:
        self._accepted: asyncio.Queue[UnixStream] = asyncio.Queue()
        self._server: asyncio.AbstractServer | None = None
        # Every connection ever accepted, so that closing the listener closes
        # them all: asyncio runs the connected callback in a task of its own,
        # which may come after the listener closed, and a stream handed out
        # may be dropped by a cancelled handler before it is entered.
        self._streams: set[UnixStream] = set()
        self._closed = False

    @classmethod
    async def create(cls, path: Path) -> UnixListener:
        listener = cls()

        async def connected(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            stream = UnixStream(reader, writer)
            if listener._closed:
                writer.close()  # connected after the listener closed
                return
            listener._streams.add(stream)
            listener._accepted.put_nowait(stream)

        listener._server = await asyncio.start_unix_server(connected, path)
        return listener

    async def accept(self) -> UnixStream:
        """The next connection, waiting for one."""
        return await self._accepted.get()

    async def serve(
        self,
        handler: Callable[[UnixStream], Awaitable[Any]],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Run ``handler`` on every connection (each closed after), until cancelled."""

        async def handle(stream: UnixStream) -> None:
            async with stream:
                await handler(stream)

        async with anyio.create_task_group() as tg:
            group = task_group or tg
            while True:
                group.start_soon(handle, await self.accept())

    async def aclose(self) -> None:
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        streams, self._streams = self._streams, set()
        for stream in streams:
            stream.close_now()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


async def unix_listener(path: Path | str) -> UnixListener:
    """Listen on ``path`` (which must not exist)."""
    return await UnixListener.create(Path(path))
