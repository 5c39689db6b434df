"""`StandaloneStreams`: which HTTP sessions have their GET stream open.

A fake ASGI app stands in for the SDK's: it answers with the status a test
picks and holds the response open until the test lets it finish. The real
thing, end to end: ``tests/e2e/test_question_copies.py``.
"""

from __future__ import annotations

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from mcp_tasks.binding._streams import StandaloneStreams


class FakeApp:
    """Answers ``status`` at once, then keeps the response open until `finish`."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.started = anyio.Event()
        self._finish = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status})
        self.started.set()
        await self._finish.wait()
        await send({"type": "http.response.body", "body": b""})

    def finish(self) -> None:
        self._finish.set()


def request(method: str, session_id: str | None) -> Scope:
    headers = [(b"accept", b"text/event-stream")]
    if session_id is not None:
        headers.append((b"mcp-session-id", session_id.encode()))
    return {"type": "http", "method": method, "headers": headers}


async def receive() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def ignore(message: Message) -> None:
    return


async def serve(streams: StandaloneStreams, app: FakeApp, scope: Scope) -> None:
    """One HTTP exchange through the tracking middleware."""
    await streams.wrap(app)(scope, receive, ignore)


async def test_a_get_answered_200_opens_the_sessions_stream_until_it_ends() -> None:
    streams = StandaloneStreams()
    events: list[tuple[str, str]] = []
    streams.notify(
        lambda s: events.append(("opened", s)), lambda s: events.append(("closed", s))
    )
    app = FakeApp(200)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, streams, app, request("GET", "s1"))
        await app.started.wait()
        assert streams.is_open("s1")
        assert not streams.is_open("s2")
        assert events == [("opened", "s1")]
        app.finish()
    assert not streams.is_open("s1")
    assert events == [("opened", "s1"), ("closed", "s1")]


@pytest.mark.parametrize(
    ("method", "session_id", "status"),
    [
        ("GET", "s1", 409),  # a second GET stream, refused by the SDK
        ("GET", "s1", 404),  # an unknown session
        ("GET", None, 200),  # not a session's stream (e.g. metadata)
        ("POST", "s1", 200),  # a request's own stream
    ],
)
async def test_other_exchanges_open_nothing(
    method: str, session_id: str | None, status: int
) -> None:
    streams = StandaloneStreams()
    events: list[str] = []
    streams.notify(events.append, events.append)
    app = FakeApp(status)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, streams, app, request(method, session_id))
        await app.started.wait()
        assert not streams.is_open("s1")
        app.finish()
    assert events == []


async def test_a_failing_listener_does_not_break_the_stream() -> None:
    streams = StandaloneStreams()

    def broken(session_id: str) -> None:
        raise RuntimeError("listener bug")

    streams.notify(broken, broken)
    app = FakeApp(200)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, streams, app, request("GET", "s1"))
        await app.started.wait()
        assert streams.is_open("s1")
        app.finish()
    assert not streams.is_open("s1")
