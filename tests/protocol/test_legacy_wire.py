"""The 2025-11-25 task wire, in process, as raw JSON-RPC (spec-notes.md §A)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from mcp_tasks.client import RpcError, TaskClient

from . import protocol_tools
from .conftest import Connect

RELATED = "io.modelcontextprotocol/related-task"


async def created(
    client: TaskClient, name: str, arguments: dict[str, Any], **kw: Any
) -> str:
    result = await client.call_tool(name, arguments, task={"ttl": 60_000}, **kw)
    task = result["task"]
    assert task["status"] == "working"
    return str(task["taskId"])


async def test_initialize_advertises_the_tasks_capability(connect: Connect) -> None:
    async with connect() as client:
        tasks = client.server_capabilities["tasks"]
        assert tasks == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
        assert "extensions" not in client.server_capabilities


async def test_tools_list_gives_each_tools_task_support(connect: Connect) -> None:
    async with connect() as client:
        tools = {t["name"]: t for t in (await client.list_tools())["tools"]}
    assert tools["echo"]["execution"] == {"taskSupport": "optional"}
    assert tools["only_task"]["execution"] == {"taskSupport": "required"}
    assert tools["never_task"]["execution"] == {"taskSupport": "forbidden"}


async def test_a_task_is_created_polled_and_its_result_fetched(
    connect: Connect,
) -> None:
    async with connect() as client:
        result = await client.call_tool("echo", {"text": "hi"}, task={"ttl": 60_000})
        task = result["task"]
        assert set(task) >= {"taskId", "status", "createdAt", "lastUpdatedAt", "ttl"}
        assert task["ttl"] == 60_000
        assert task["pollInterval"] == 50
        with anyio.fail_after(5):
            payload = await client.task_result(task["taskId"])
        assert payload["content"] == [{"type": "text", "text": "hi"}]
        assert payload["_meta"][RELATED] == {"taskId": task["taskId"]}
        got = await client.get_task(task["taskId"])
        assert got["status"] == "completed"
        assert RELATED not in got.get("_meta", {})


async def test_a_tool_error_result_makes_the_task_failed(connect: Connect) -> None:
    async with connect() as client:
        task_id = await created(client, "broken", {})
        with anyio.fail_after(5):
            payload = await client.task_result(task_id)
        assert payload["isError"] is True
        task = await client.get_task(task_id)
        assert task["status"] == "failed"
        assert "widget is broken" in task["statusMessage"]


async def test_tasks_result_returns_the_same_json_rpc_error(connect: Connect) -> None:
    async with connect() as client:
        task_id = await created(client, "refused", {})
        with anyio.fail_after(5), pytest.raises(RpcError) as caught:
            await client.task_result(task_id)
        assert (caught.value.code, caught.value.message) == (-32602, "no widgets here")
        assert (await client.get_task(task_id))["status"] == "failed"


async def test_cancel_stops_a_running_task_and_is_refused_once_terminal(
    connect: Connect,
) -> None:
    async with connect() as client:
        task_id = await created(client, "gate", {"key": "c"})
        with anyio.fail_after(5):
            await protocol_tools.STARTED["c"].wait()
        cancelled = await client.cancel_task(task_id)
        assert cancelled["status"] == "cancelled"
        with pytest.raises(RpcError) as caught:
            await client.cancel_task(task_id)
        assert caught.value.code == -32602
        assert "terminal status 'cancelled'" in caught.value.message
        protocol_tools.GATES["c"].set()  # a late completion cannot undo the cancel
        with anyio.fail_after(5):
            payload = await client.task_result(task_id)
        assert payload["isError"] is True
        assert (await client.get_task(task_id))["status"] == "cancelled"


async def test_task_support_is_enforced_with_method_not_found(connect: Connect) -> None:
    async with connect() as client:
        with pytest.raises(RpcError) as required:
            await client.call_tool("only_task", {})
        with pytest.raises(RpcError) as forbidden:
            await client.call_tool("never_task", {}, task={})
        assert await client.call_tool("never_task", {}) == {
            "content": [{"type": "text", "text": "right away"}],
            "isError": False,
        }
    assert required.value.code == forbidden.value.code == -32601


async def test_an_optional_tool_without_a_task_answers_synchronously(
    connect: Connect,
) -> None:
    async with connect() as client:
        result = await client.call_tool("echo", {"text": "now"})
        assert result["content"][0]["text"] == "now"
        assert (await client.list_tasks())["tasks"] == []  # not a task to the client


async def test_bad_inputs_get_specific_errors(connect: Connect) -> None:
    async with connect() as client:
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("tasks/get", {"taskId": "no-such-task"}, -32602, "not found"),
            ("tasks/list", {"cursor": "garbage"}, -32602, "cursor"),
            (
                "tools/call",
                {"name": "nope", "arguments": {}, "task": {}},
                -32602,
                "name",
            ),
            (
                "tools/call",
                {"name": "echo", "arguments": {"text": 5}, "task": {}},
                -32602,
                "text",
            ),
            (
                "tools/call",
                {"name": "echo", "arguments": {}, "task": {"ttl": -1}},
                -32602,
                "task.ttl",
            ),
        ]
        for method, params, code, mentions in cases:
            with pytest.raises(RpcError) as caught:
                await client.request(method, params)
            assert caught.value.code == code, (method, params)
            assert mentions in caught.value.message, caught.value.message


async def test_tasks_list_pages_with_an_opaque_cursor(connect: Connect) -> None:
    async with connect() as client:
        ids = [await created(client, "echo", {"text": str(i)}) for i in range(55)]
        first = await client.list_tasks()
        second = await client.list_tasks(first["nextCursor"])
    listed = [t["taskId"] for t in first["tasks"] + second["tasks"]]
    assert listed == ids
    assert len(first["tasks"]) == 50
    assert "nextCursor" not in second


async def test_status_and_progress_notifications_follow_the_task(
    connect: Connect,
) -> None:
    async with connect() as client:
        task_id = await created(client, "progress", {"steps": 3}, progress_token="tok")
        with anyio.fail_after(5):
            await client.task_result(task_id)
            while True:
                note = await client.next_notification("notifications/tasks/status")
                if note["params"]["status"] == "completed":
                    break
        progress = [
            n["params"]
            for n in client.notifications
            if n["method"] == "notifications/progress"
        ]
    assert [p["progress"] for p in progress] == [1, 2, 3]
    assert {p["progressToken"] for p in progress} == {"tok"}
    assert note["params"]["taskId"] == task_id
    assert RELATED not in note["params"].get("_meta", {})


async def test_a_question_is_asked_and_answered_on_tasks_result(
    connect: Connect,
) -> None:
    asked: list[dict[str, Any]] = []

    async def on_request(method: str, params: dict[str, Any]) -> dict[str, Any]:
        asked.append({"method": method, **params})
        return {"action": "accept", "content": {"ok": True}}

    caps: dict[str, Any] = {"elicitation": {"form": {}}}
    async with connect(capabilities=caps, on_request=on_request) as client:
        task_id = await created(client, "confirm", {"what": "launch"})
        with anyio.fail_after(5):
            payload = await client.task_result(task_id)
    assert payload["content"][0]["text"] == "confirmed launch"
    assert asked, "the question never reached the client"
    assert asked[0]["method"] == "elicitation/create"
    assert asked[0]["_meta"][RELATED] == {"taskId": task_id}


async def test_a_client_without_elicitation_gets_a_failed_task_not_a_hang(
    connect: Connect,
) -> None:
    async with connect(capabilities={}) as client:
        task_id = await created(client, "confirm", {"what": "launch"})
        with anyio.fail_after(5), pytest.raises(RpcError) as caught:
            await client.task_result(task_id)
        assert caught.value.code == -32021
        assert (await client.get_task(task_id))["status"] == "failed"
