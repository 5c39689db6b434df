"""Tests for ``mcp_tasks.client.TaskClient`` against ``tests/fixtures/echo_server.py``.

Each test runs over stdio (a fresh server subprocess) and over Streamable HTTP
(one server subprocess per module), on the wire generations the fixture
serves. Nothing sleeps to synchronise: waits are event-driven and bounded by
``anyio.fail_after``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_tasks.client import (
    LEGACY_WIRE,
    MODERN_WIRE,
    TASKS_EXTENSION,
    ConnectionClosedError,
    JSONObject,
    RpcError,
    TaskClient,
    Wire,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

ECHO_SERVER = Path(__file__).resolve().parents[1] / "fixtures" / "echo_server.py"
TIMEOUT = 15.0
WIRES: list[Wire] = [LEGACY_WIRE, MODERN_WIRE]
APPROVE: JSONObject = {"action": "accept", "content": {"approve": True}}

Connect = Callable[..., "AbstractAsyncContextManager[TaskClient]"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def http_url() -> AsyncGenerator[str]:
    """Start the echo server over HTTP on a free port; yield its endpoint URL."""
    process = await anyio.open_process(
        [sys.executable, str(ECHO_SERVER), "--http", "0"],
        stdin=subprocess.DEVNULL,
        stderr=None,
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(TIMEOUT):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(
                b"\n", 4096
            )
        url = line.decode().removeprefix("listening on ").strip()
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        process.terminate()
        with anyio.move_on_after(TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest) -> Wire:
    value: Wire = request.param
    return value


@pytest.fixture
def connect(transport: str, http_url: str) -> Connect:
    """Open a ``TaskClient`` to the echo server over ``transport``."""

    def open_client(**kwargs: Any) -> AbstractAsyncContextManager[TaskClient]:
        if transport == "stdio":
            return TaskClient.stdio([sys.executable, str(ECHO_SERVER)], **kwargs)
        return TaskClient.http(http_url, **kwargs)

    return open_client


def text_of(result: JSONObject) -> str:
    """The text of a ``CallToolResult``'s first content block."""
    content = cast("list[JSONObject]", result["content"])
    text = content[0]["text"]
    assert isinstance(text, str)
    return text


async def inspect(client: TaskClient, **kwargs: Any) -> JSONObject:
    """Call the echo server's ``inspect`` tool; return what the server saw."""
    seen = json.loads(text_of(await client.call_tool("inspect", **kwargs)))
    assert isinstance(seen, dict)
    return cast("JSONObject", seen)


async def test_request_response(connect: Connect, transport: str, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client:
            assert client.wire == wire
            assert "tools" in client.server_capabilities
            assert client.server_info is not None
            assert client.server_info["name"] == "echo-server"
            assert (client.session_id is not None) == (
                transport == "http" and wire == LEGACY_WIRE
            )
            tools = await client.list_tools()
            assert "greet" in {tool["name"] for tool in tools["tools"]}
            result = await client.call_tool("greet", {"name": "Ada"})
            assert text_of(result) == "Hello, Ada!"
            assert client.created_task(result) is None


async def test_concurrent_requests(connect: Connect, wire: Wire) -> None:
    names = [f"n{i}" for i in range(8)]
    results: dict[str, str] = {}

    async def greet(client: TaskClient, name: str) -> None:
        results[name] = text_of(await client.call_tool("greet", {"name": name}))

    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client, anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(greet, client, name)
    assert results == {name: f"Hello, {name}!" for name in names}


async def test_json_rpc_error_raises(connect: Connect, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client:
            with pytest.raises(RpcError) as caught:
                await client.call_tool("fail", {"code": -32042, "message": "nope"})
            assert caught.value.code == -32042
            assert caught.value.message == "nope"
            assert caught.value.data == {"tool": "fail"}
            assert caught.value.method == "tools/call"
            with pytest.raises(RpcError) as caught:
                await client.get_task("unknown")
            assert caught.value.code == -32602
            with pytest.raises(RpcError) as caught:
                await client.request("no/such/method")
            assert caught.value.code == -32601
            # The connection is still usable after errors.
            assert (
                text_of(await client.call_tool("greet", {"name": "x"})) == "Hello, x!"
            )


async def test_custom_method(connect: Connect, transport: str, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client:
            task = await client.get_task("t-1")
    assert task["taskId"] == "t-1"
    assert task["status"] == "working"
    # Only the 2026-07-28 HTTP wire routes tasks/get by Mcp-Name.
    expected = "t-1" if (transport, wire) == ("http", MODERN_WIRE) else None
    assert task["mcpName"] == expected
    if wire == MODERN_WIRE:
        assert task["resultType"] == "complete"


async def test_request_scoped_notification(connect: Connect, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client:
            await client.call_tool("notify", {"message": "one"}, progress_token="a")
            # Sent on the request's own channel before its response, so it is
            # recorded by the time the call returns.
            assert [n["method"] for n in client.notifications] == [
                "notifications/progress"
            ]
            await client.call_tool("notify", {"message": "two"}, progress_token=7)
            first = await client.next_notification("notifications/progress")
            second = await client.next_notification()
    assert first["params"]["progressToken"] == "a"
    assert first["params"]["message"] == "one"
    assert second["params"]["progressToken"] == 7
    assert second["params"]["message"] == "two"


async def test_standalone_notification(connect: Connect) -> None:
    # Over HTTP this one travels on the standalone GET stream.
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=LEGACY_WIRE) as client:
            await client.call_tool("notify_standalone")
            notification = await client.next_notification(
                "notifications/tools/list_changed"
            )
    assert notification == {"method": "notifications/tools/list_changed", "params": {}}


async def test_next_notification_waits(connect: Connect, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client:
            received: list[JSONObject] = []

            async def wait() -> None:
                received.append(
                    await client.next_notification("notifications/progress")
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                await client.call_tool("notify", {"message": "m"}, progress_token="w")
    assert [n["params"]["progressToken"] for n in received] == ["w"]


@pytest.mark.parametrize("channel", ["request", "standalone"])
async def test_server_request_answered(connect: Connect, channel: str) -> None:
    seen: list[tuple[str, JSONObject]] = []

    async def on_request(method: str, params: JSONObject) -> JSONObject:
        seen.append((method, params))
        return APPROVE

    with anyio.fail_after(TIMEOUT):
        async with connect(
            wire=LEGACY_WIRE,
            capabilities={"elicitation": {"form": {}}},
            on_request=on_request,
        ) as client:
            result = await client.call_tool(
                "ask", {"message": "ok?", "channel": channel}
            )
            assert [r["method"] for r in client.server_requests] == [
                "elicitation/create"
            ]
    assert json.loads(text_of(result)) == APPROVE
    assert [(method, params["message"]) for method, params in seen] == [
        ("elicitation/create", "ok?")
    ]


async def test_server_request_error_reply(connect: Connect) -> None:
    async def refuse(method: str, params: JSONObject) -> JSONObject:
        raise RpcError(-32099, "refused", {"why": "test"})

    with anyio.fail_after(TIMEOUT):
        async with connect(wire=LEGACY_WIRE, on_request=refuse) as client:
            with pytest.raises(RpcError) as caught:
                await client.call_tool("ask")
    # The echo server lets the client's error propagate out of its tool.
    assert caught.value.code == -32099


async def test_server_request_without_handler(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=LEGACY_WIRE) as client:
            with pytest.raises(RpcError) as caught:
                await client.call_tool("ask")
    assert caught.value.code == -32601


async def test_handler_crash_is_recorded(connect: Connect) -> None:
    async def crash(method: str, params: JSONObject) -> JSONObject:
        raise RuntimeError("boom")

    with anyio.fail_after(TIMEOUT):
        async with connect(wire=LEGACY_WIRE, on_request=crash) as client:
            with pytest.raises(RpcError) as caught:
                await client.call_tool("ask")
            assert [str(e) for e in client.handler_errors] == ["boom"]
    assert caught.value.code == -32603


async def test_ping_answered_by_default(connect: Connect) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=LEGACY_WIRE) as client:
            assert text_of(await client.call_tool("ping_client")) == "pong"
            assert [r["method"] for r in client.server_requests] == ["ping"]


async def test_cancelled_request_propagates(connect: Connect) -> None:
    # Cancelling our tools/call sends notifications/cancelled; the server then
    # cancels the elicitation it had sent us, which cancels our handler.
    started = anyio.Event()
    handler_cancelled = anyio.Event()

    async def wait_forever(method: str, params: JSONObject) -> JSONObject:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            handler_cancelled.set()
        return {}

    with anyio.fail_after(TIMEOUT):
        async with connect(wire=LEGACY_WIRE, on_request=wait_forever) as client:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await client.call_tool("ask")

                tg.start_soon(call)
                await started.wait()
                tg.cancel_scope.cancel()
            await handler_cancelled.wait()
            notice = await client.next_notification("notifications/cancelled")
            assert notice["params"]["requestId"] == client.server_requests[0]["id"]
            assert (
                text_of(await client.call_tool("greet", {"name": "y"})) == "Hello, y!"
            )


@pytest.mark.parametrize("declare", [True, False])
async def test_modern_envelope(connect: Connect, transport: str, declare: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(
            wire=MODERN_WIRE,
            capabilities={"elicitation": {"form": {}}},
            declare_tasks_extension=declare,
            client_info={"name": "tester", "version": "9"},
        ) as client:
            seen = await inspect(client)
    assert seen["protocolVersion"] == MODERN_WIRE
    meta = seen["meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == MODERN_WIRE
    assert meta["io.modelcontextprotocol/clientInfo"] == {
        "name": "tester",
        "version": "9",
    }
    capabilities = meta["io.modelcontextprotocol/clientCapabilities"]
    assert capabilities["elicitation"] == {"form": {}}
    assert (TASKS_EXTENSION in capabilities.get("extensions", {})) == declare
    if transport == "http":
        headers = seen["headers"]
        assert headers["mcp-protocol-version"] == MODERN_WIRE
        assert headers["mcp-method"] == "tools/call"
        assert headers["mcp-name"] == "inspect"
    else:
        assert seen["headers"] is None


async def test_modern_meta_override(connect: Connect) -> None:
    # Caller's _meta wins over the envelope; None drops an envelope key.
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=MODERN_WIRE) as client:
            seen = await inspect(
                client,
                meta={
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": None,
                    "x": 1,
                },
            )
            # The SDK server requires protocolVersion and clientCapabilities.
            with pytest.raises(RpcError) as caught:
                await client.call_tool(
                    "greet",
                    {"name": "x"},
                    meta={"io.modelcontextprotocol/clientCapabilities": None},
                )
            assert caught.value.code == -32602
    assert seen["meta"]["io.modelcontextprotocol/clientCapabilities"] == {}
    assert "io.modelcontextprotocol/clientInfo" not in seen["meta"]
    assert seen["meta"]["x"] == 1
    assert seen["meta"]["io.modelcontextprotocol/protocolVersion"] == MODERN_WIRE


async def test_legacy_handshake(connect: Connect, transport: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(
            wire=LEGACY_WIRE, capabilities={"elicitation": {"form": {}}}
        ) as client:
            seen = await inspect(client)
    assert seen["protocolVersion"] == LEGACY_WIRE
    assert seen["clientCapabilities"] == {"elicitation": {"form": {}}}
    assert seen["meta"] is None
    if transport == "http":
        headers = seen["headers"]
        assert headers["mcp-protocol-version"] == LEGACY_WIRE
        assert headers["mcp-session-id"] == client.session_id
        assert "mcp-method" not in headers


async def test_http_token_and_headers(http_url: str, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT):
        async with TaskClient.http(
            http_url, wire=wire, token="s3cret", headers={"Mcp-Extra": "yes"}
        ) as client:
            seen = await inspect(client)
    assert seen["headers"]["authorization"] == "Bearer s3cret"
    assert seen["headers"]["mcp-extra"] == "yes"


async def test_http_header_overrides(http_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with TaskClient.http(http_url, wire=MODERN_WIRE) as client:
            # The SDK validates Mcp-Name against params.name for tools/call ...
            with pytest.raises(RpcError) as caught:
                await client.call_tool(
                    "greet", {"name": "x"}, headers={"MCP-NAME": "other"}
                )
            assert caught.value.code == -32020
            with pytest.raises(RpcError) as caught:
                await client.request("tools/list", headers={"Mcp-Method": "tools/call"})
            assert caught.value.code == -32020
            # ... but not for tasks/get: the server has to (the echo server doesn't).
            task = await client.get_task("t-2", headers={"Mcp-Name": "t-3"})
            assert task["mcpName"] == "t-3"
            task = await client.get_task("t-2", headers={"Mcp-Name": None})
            assert task["mcpName"] is None


async def test_non_ascii_routing_name_is_encoded(http_url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with TaskClient.http(http_url, wire=MODERN_WIRE) as client:
            task = await client.get_task("tâche")
    assert task["taskId"] == "tâche"
    assert task["mcpName"].startswith("=?base64?")


async def test_wire_only_helpers(connect: Connect, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client:
            if wire == LEGACY_WIRE:
                with pytest.raises(ValueError, match="tasks/update"):
                    await client.update_task("t", {})
            else:
                with pytest.raises(ValueError, match="tasks/result"):
                    await client.task_result("t")
                with pytest.raises(ValueError, match="tasks/list"):
                    await client.list_tasks()
                # Still sendable raw, e.g. to check the server's -32601.
                with pytest.raises(RpcError) as caught:
                    await client.request("tasks/list")
                assert caught.value.code == -32601


async def test_created_task() -> None:
    # A pure helper; needs no server, only a client object per wire.
    legacy = TaskClient(
        _NullSender(),
        wire=LEGACY_WIRE,
        capabilities=None,
        declare_tasks_extension=True,
        on_request=None,
        client_info=None,
        http=None,
    )
    modern = TaskClient(
        _NullSender(),
        wire=MODERN_WIRE,
        capabilities=None,
        declare_tasks_extension=True,
        on_request=None,
        client_info=None,
        http=None,
    )
    task = {"taskId": "a", "status": "working"}
    assert legacy.created_task({"task": task}) == task
    assert legacy.created_task({"content": []}) is None
    assert modern.created_task({"resultType": "task", **task}) == {
        "resultType": "task",
        **task,
    }
    assert modern.created_task({"resultType": "complete", "content": []}) is None
    assert modern.client_capabilities == {"extensions": {TASKS_EXTENSION: {}}}
    assert legacy.client_capabilities == {}


class _NullSender:
    async def send(self, item: object, /) -> None:
        raise AssertionError("nothing should be sent")


async def test_closed_client_and_no_leak(connect: Connect, transport: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=LEGACY_WIRE) as client:
            pid = (await inspect(client))["pid"]
            assert not client.closed
    assert client.closed
    with pytest.raises(ConnectionClosedError):
        await client.call_tool("greet", {"name": "late"})
    with pytest.raises(ConnectionClosedError):
        await client.next_notification("never")
    if transport == "stdio":
        # The stdio server process was reaped, not left running.
        assert not await anyio.Path(f"/proc/{pid}").exists()


async def test_pending_request_fails_when_server_dies() -> None:
    # `ask` parks the server until the client answers; the client's handler
    # never returns, and the server process is closed from under the request.
    started = anyio.Event()

    async def never(method: str, params: JSONObject) -> JSONObject:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    outcome: list[BaseException] = []
    with anyio.fail_after(TIMEOUT):
        async with TaskClient.stdio(
            [sys.executable, str(ECHO_SERVER)], on_request=never
        ) as client:

            async def call() -> None:
                try:
                    await client.call_tool("ask")
                except ConnectionClosedError as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await started.wait()
                pid = (await inspect(client))["pid"]
                # Kill the server: the read side ends, pending requests fail.
                os.kill(pid, signal.SIGKILL)
    assert len(outcome) == 1
    assert client.closed


async def test_a_response_stream_cut_by_a_dying_http_server_is_connection_lost() -> (
    None
):
    # The SDK's HTTP transport makes up a -32000 error when a request's SSE
    # stream ends without a response; that is a lost connection (retry), not a
    # server's answer (-32000 is also a server-defined code, next test).
    started = anyio.Event()

    async def never(method: str, params: JSONObject) -> JSONObject:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    process = await anyio.open_process(
        [sys.executable, str(ECHO_SERVER), "--http", "0"],
        stdin=subprocess.DEVNULL,
        stderr=None,
    )
    outcome: list[BaseException] = []
    async with process:
        assert process.stdout is not None
        with anyio.fail_after(TIMEOUT):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(
                b"\n", 4096
            )
            url = line.decode().removeprefix("listening on ").strip()
            async with TaskClient.http(url, on_request=never) as client:

                async def call() -> None:
                    try:
                        await client.call_tool("ask")
                    except RpcError as exc:
                        outcome.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await started.wait()
                    process.kill()
                    await process.wait()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError), outcome[0]


async def test_a_servers_own_minus_32000_error_stays_a_server_error(
    connect: Connect, wire: Wire
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect(wire=wire) as client:
            with pytest.raises(RpcError) as caught:
                await client.call_tool("fail", {"code": -32000, "message": "full"})
    assert not isinstance(caught.value, ConnectionClosedError)
    assert caught.value.code == -32000


async def test_body_errors_are_not_wrapped(connect: Connect, wire: Wire) -> None:
    # The transports' task groups would wrap these in ExceptionGroup.
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(RpcError) as caught:
            async with connect(wire=wire) as client:
                await client.call_tool("fail", {"code": -32001})
        assert caught.value.code == -32001
        with pytest.raises(KeyError):
            async with connect(wire=wire):
                raise KeyError("body")


async def test_server_that_exits_at_once() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(ConnectionClosedError):
        async with TaskClient.stdio([sys.executable, "-c", "pass"]):
            raise AssertionError("connected to nothing")


async def test_unspawnable_command() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(FileNotFoundError):
        async with TaskClient.stdio(["/nonexistent/mcp-server"]):
            raise AssertionError("spawned nothing")


async def test_http_wrong_endpoint(http_url: str, wire: Wire) -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(RpcError) as caught:
        async with TaskClient.http(http_url + "/nope", wire=wire):
            raise AssertionError("connected to nothing")
    assert caught.value.code == -32601
