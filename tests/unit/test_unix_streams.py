"""The tests' UNIX listener survives a read cancelled just as data arrives."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest

from ..unix_streams import unix_listener


async def test_a_receive_cancelled_as_its_socket_turns_readable_is_quiet(
    tmp_path: Path,
) -> None:
    # The cancel is queued before the loop's next poll, and the data is already
    # in the socket, so that poll queues the "readable" callback right behind
    # the cancel, in the same iteration: the order that made anyio's raw UNIX
    # streams set a result on a cancelled future.
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    path = tmp_path / "s"
    listener = await unix_listener(path)
    with socket.socket(socket.AF_UNIX) as peer:
        peer.connect(str(path))
        async with await listener.accept() as stream:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:

                    async def receive() -> None:
                        await stream.receive()

                    tg.start_soon(receive)
                    await anyio.wait_all_tasks_blocked()
                    peer.sendall(b"x")
                    loop.call_soon(scope.cancel)
                    await anyio.sleep_forever()
            assert scope.cancelled_caught
            # Let the loop run every callback queued meanwhile.
            await anyio.wait_all_tasks_blocked()
    await listener.aclose()
    assert errors == []


async def test_accepted_streams_carry_bytes_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "s"
    listener = await unix_listener(path)
    try:
        async with await anyio.connect_unix(path) as client:
            async with await listener.accept() as server:
                await client.send(b"ping\n")
                assert await server.receive() == b"ping\n"
                await server.send(b"pong\n")
                assert await client.receive() == b"pong\n"
                await client.aclose()
                with pytest.raises(anyio.EndOfStream):
                    await server.receive()
    finally:
        await listener.aclose()
