"""How a real server answers 2025-11-25 POSTs: JSON unless something goes first.

Raw HTTP against ``mcp-tasks serve --http`` (spec-notes C59): a request whose
first outgoing message is its response gets one ``application/json`` body on a
connection that stays open; a call whose progress or question must go out
first gets an SSE stream that carries them, then the response; a request that
stays silent past the window gets a stream too. These tests fail if mcp's
transport changes under ``mcp_tasks.binding._response_mode``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import pytest

from mcp_tasks.binding import _response_mode
from mcp_tasks.client import TaskClient

from .conftest import ServerFilesFactory
from .support import TIMEOUT, Gates, HttpServer, text_of

pytestmark = pytest.mark.timeout(90)

LEGACY = "2025-11-25"
ROOT = Path(__file__).resolve().parents[2]
JSON_AND_SSE = "application/json, text/event-stream"
INITIALIZE: dict[str, Any] = {
    "protocolVersion": LEGACY,
    "capabilities": {"elicitation": {"form": {}}},
    "clientInfo": {"name": "response-mode-test", "version": "1"},
}


class Session:
    """One handshake-era session spoken in raw HTTP, on a one-connection pool."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = {"content-type": "application/json", "accept": JSON_AND_SSE}
        self._next_id = 0

    def body(self, method: str, params: dict[str, Any]) -> str:
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        return json.dumps(message | {"params": params})

    async def open(self) -> None:
        hello = await self.http.post(
            self.url, headers=self.headers, content=self.body("initialize", INITIALIZE)
        )
        assert hello.status_code == 200, hello.text
        self.headers |= {
            "mcp-session-id": hello.headers["mcp-session-id"],
            "mcp-protocol-version": LEGACY,
        }
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        answer = await self.http.post(
            self.url, headers=self.headers, content=json.dumps(initialized)
        )
        assert answer.status_code == 202

    async def post(self, method: str, params: dict[str, Any]) -> httpx2.Response:
        return await self.http.post(
            self.url, headers=self.headers, content=self.body(method, params)
        )

    def stream(self, method: str, params: dict[str, Any]) -> Any:
        return self.http.stream(
            "POST", self.url, headers=self.headers, content=self.body(method, params)
        )


def local_port(response: httpx2.Response) -> int:
    """The client-side port of the connection ``response`` came on."""
    stream = response.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


def message_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in an answer, JSON or SSE."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line[:5] == "data:"]
        return cast("dict[str, Any]", json.loads(data[-1]))
    return cast("dict[str, Any]", response.json())


async def events(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE answer, as they arrive."""
    async for line in response.aiter_lines():
        if line.startswith("data:") and line[5:].strip():
            yield cast("dict[str, Any]", json.loads(line[5:]))


@pytest.fixture
async def session(http_server: HttpServer) -> AsyncGenerator[Session]:
    # One connection at most: requests can only be answered in turn on it.
    limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
    # Long enough for an answer that only starts after the window.
    timeout = _response_mode.STREAM_AFTER_SECONDS + TIMEOUT
    async with httpx2.AsyncClient(timeout=timeout, limits=limits) as http:
        opened = Session(http, http_server.url)
        await opened.open()
        yield opened
        await http.delete(http_server.url, headers=opened.headers)


async def test_an_answer_with_nothing_before_it_is_json_on_a_kept_connection(
    session: Session,
) -> None:
    created = await session.post(
        "tools/call",
        {"name": "echo", "arguments": {"text": "hi"}, "task": {"ttl": 60_000}},
    )
    task_id = message_of(created)["result"]["task"]["taskId"]
    ports: set[int] = set()
    for method, params in [
        ("tasks/get", {"taskId": task_id}),
        ("tools/call", {"name": "echo", "arguments": {"text": "plain"}}),
        ("tools/list", {}),
        ("tasks/get", {"taskId": "no-such-task"}),
    ]:
        answer = await session.post(method, params)
        assert answer.headers["content-type"] == "application/json", method
        assert int(answer.headers["content-length"]) == len(answer.content)
        assert "id" in answer.json(), answer.text
        ports.add(local_port(answer))
    assert created.headers["content-type"] == "application/json"
    # An unknown task is still a JSON-RPC error, now in a JSON body.
    assert answer.json()["error"]["code"] == -32602
    # Every answer came on the connection of the first: it was kept alive.
    assert ports == {local_port(created)}


async def test_progress_of_a_synchronous_call_streams_before_its_result(
    session: Session,
) -> None:
    params = {
        "name": "progress",
        "arguments": {"steps": 3},
        "_meta": {"progressToken": "p-1"},
    }
    async with session.stream("tools/call", params) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        messages = [message async for message in events(answer)]
    methods = [message.get("method") for message in messages]
    assert methods == ["notifications/progress"] * 3 + [None]
    assert [m["params"]["progress"] for m in messages[:3]] == [1, 2, 3]
    assert messages[-1]["result"]["content"][0]["text"] == "3 steps"


async def test_a_request_silent_past_the_window_streams_then_answers(
    session: Session, gates: Gates
) -> None:
    key = gates.key()
    created = await session.post(
        "tools/call",
        {"name": "gate", "arguments": {"key": key}, "task": {"ttl": 60_000}},
    )
    task_id = message_of(created)["result"]["task"]["taskId"]
    with anyio.fail_after(_response_mode.STREAM_AFTER_SECONDS + TIMEOUT):
        async with session.stream("tasks/result", {"taskId": task_id}) as answer:
            # The headers came while the task still runs: the answer is a
            # stream, whose pings keep proxies' idle-read timeouts at bay.
            assert answer.headers["content-type"].startswith("text/event-stream")
            gates.release(key)
            messages = [message async for message in events(answer)]
    assert messages[-1]["result"]["content"][0]["text"] == f"released {key}"


# ----------------------------------------------------- a question on the call


@pytest.fixture(scope="module")
def ask_server(server_files: ServerFilesFactory) -> Iterator[HttpServer]:
    files = server_files("response-mode-ask")
    server = HttpServer(files, extra_args=["--tools", str(ROOT / "tools" / "ask.py")])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_question_on_a_synchronous_call_streams_and_is_answered(
    ask_server: HttpServer,
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        session = Session(http, ask_server.url)
        await session.open()
        params = {"name": "ask", "arguments": {"question": "Colour?"}}
        with anyio.fail_after(TIMEOUT):
            async with session.stream("tools/call", params) as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                messages = events(answer)
                question = await anext(messages)
                assert question["method"] == "elicitation/create"
                reply = {
                    "jsonrpc": "2.0",
                    "id": question["id"],
                    "result": {"action": "accept", "content": {"answer": "teal"}},
                }
                # The pool opens a second connection for the reply.
                accepted = await http.post(
                    session.url, headers=session.headers, content=json.dumps(reply)
                )
                assert accepted.status_code == 202
                final = [message async for message in messages]
        assert final[-1]["result"]["content"][0]["text"] == "teal"


# --------------------------------------------------- our client keeps its connections


def connections_to(port: int) -> set[int]:
    """Local ports of this host's TCP connections to 127.0.0.1:``port``.

    Closed ones linger in TIME_WAIT for a minute, so every connection opened
    since an earlier call shows up as a new port.
    """
    ports: set[int] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if remote == f"0100007F:{port:04X}":
            ports.add(int(local.split(":")[1], 16))
    return ports


async def test_our_client_keeps_its_connection_across_streamed_answers(
    http_server: HttpServer,
) -> None:
    async with TaskClient.http(http_server.url) as client:
        await client.call_tool("progress", {"steps": 1}, progress_token="warm-up")
        before = connections_to(http_server.port)
        for round_ in range(20):
            result = await client.call_tool(
                "progress", {"steps": 2}, progress_token=f"keep-{round_}"
            )
            assert text_of(result) == "2 steps"
        opened = connections_to(http_server.port) - before
    # Each answer was a stream (its progress went first), yet no new
    # connection was needed: the SDK's early close is read on to the end.
    assert len(opened) <= 2, opened
