"""The 2026-07-28 tasks extension, in process, as raw JSON-RPC (spec-notes.md §B)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from mcp_tasks.client import RpcError, TaskClient

from ..schemas import check, check_get_task_result, check_task_notification
from . import protocol_tools
from .conftest import Connect

MODERN = "2026-07-28"
EXTENSION = "io.modelcontextprotocol/tasks"
FORM: dict[str, Any] = {"elicitation": {"form": {}}}


async def settle(client: TaskClient, task_id: str, *statuses: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        return await client.poll_task(
            task_id, until=statuses or ("completed", "failed", "cancelled")
        )


async def test_discover_advertises_the_extension_and_no_legacy_tasks(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN) as client:
        assert client.server_capabilities["extensions"] == {EXTENSION: {}}
        assert "tasks" not in client.server_capabilities


async def test_a_declaring_client_gets_a_flat_task_with_the_result_inlined(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN) as client:
        created = await client.call_tool("echo", {"text": "hi"}, task={"ttl": 5})
        assert created["resultType"] == "task"
        assert "task" not in created
        assert "requestState" not in created
        assert isinstance(created["ttlMs"], int)
        assert "ttl" not in created
        done = await settle(client, created["taskId"])
    assert done["status"] == "completed"
    assert done["resultType"] == "complete"
    assert done["result"]["content"] == [{"type": "text", "text": "hi"}]
    assert "io.modelcontextprotocol/related-task" not in done["result"].get("_meta", {})


async def test_a_tool_error_completes_and_a_protocol_error_fails(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN) as client:
        broken = client.created_task(await client.call_tool("broken", {}))
        refused = client.created_task(await client.call_tool("refused", {}))
        assert broken is not None
        assert refused is not None
        broken_done = await settle(client, broken["taskId"])
        refused_done = await settle(client, refused["taskId"])
    assert broken_done["status"] == "completed"
    assert broken_done["result"]["isError"] is True
    assert refused_done["status"] == "failed"
    assert "result" not in refused_done
    assert refused_done["error"] == {"code": -32602, "message": "no widgets here"}


async def test_removed_methods_are_not_found(connect: Connect) -> None:
    async with connect(wire=MODERN) as client:
        for method in ("tasks/result", "tasks/list"):
            with pytest.raises(RpcError) as caught:
                await client.request(method, {"taskId": "x"})
            assert caught.value.code == -32601


async def test_a_non_declaring_client_gets_no_task_and_missing_capability_errors(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN, declare_tasks_extension=False) as client:
        plain = await client.call_tool("echo", {"text": "sync"}, task={"ttl": 1})
        assert plain["content"][0]["text"] == "sync"
        assert "taskId" not in plain
        with pytest.raises(RpcError) as required:
            await client.call_tool("only_task", {})
        with pytest.raises(RpcError) as get:
            await client.get_task("anything")
    assert required.value.code == get.value.code == -32021
    assert required.value.data == {
        "requiredCapabilities": {"extensions": {EXTENSION: {}}}
    }


async def test_input_requests_are_answered_with_tasks_update(connect: Connect) -> None:
    async with connect(wire=MODERN, capabilities=FORM) as client:
        created = client.created_task(await client.call_tool("confirm", {"what": "x"}))
        assert created is not None
        task_id = created["taskId"]
        waiting = await settle(client, task_id, "input_required")
        request = waiting["inputRequests"]["confirm"]
        assert request["method"] == "elicitation/create"
        with pytest.raises(RpcError) as bad:
            await client.update_task(
                task_id, {"confirm": {"action": "accept", "content": {"ok": "y"}}}
            )
        assert bad.value.code == -32602
        assert "inputResponses.confirm" in bad.value.message
        still = await client.get_task(task_id)
        assert still["status"] == "input_required"
        assert "confirm" in still["inputRequests"]
        ack = await client.update_task(
            task_id,
            {
                "unknown": {"ignored": True},
                "confirm": {"action": "accept", "content": {"ok": True}},
            },
        )
        assert ack["resultType"] == "complete"
        assert "taskId" not in ack
        done = await settle(client, task_id)
    assert done["result"]["content"][0]["text"] == "confirmed x"


async def test_cancel_is_an_acknowledgement_also_for_a_finished_task(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN) as client:
        created = client.created_task(await client.call_tool("gate", {"key": "m"}))
        assert created is not None
        with anyio.fail_after(5):
            await protocol_tools.STARTED["m"].wait()
        first = await client.cancel_task(created["taskId"])
        assert (await settle(client, created["taskId"]))["status"] == "cancelled"
        again = await client.cancel_task(created["taskId"])
        with pytest.raises(RpcError) as unknown:
            await client.cancel_task("no-such-task")
    for ack in (first, again):
        assert ack["resultType"] == "complete"
        assert "status" not in ack
    assert unknown.value.code == -32602


async def test_a_synchronous_question_uses_multi_round_trip_requests(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN, capabilities=FORM) as client:
        first = await client.call_tool("ask_name", {})
        assert first["resultType"] == "input_required"
        assert first["inputRequests"]["name"]["method"] == "elicitation/create"
        state = first["requestState"]
        with pytest.raises(RpcError) as tampered:
            await client.request(
                "tools/call",
                {
                    "name": "ask_name",
                    "arguments": {},
                    "requestState": state + "x",
                    "inputResponses": {
                        "name": {"action": "accept", "content": {"name": "Eve"}}
                    },
                },
            )
        assert tampered.value.code == -32602
        second = await client.request(
            "tools/call",
            {
                "name": "ask_name",
                "arguments": {},
                "requestState": state,
                "inputResponses": {
                    "name": {"action": "accept", "content": {"name": "Ada"}}
                },
            },
        )
    assert second["content"][0]["text"] == "Hello, Ada!"


async def test_a_task_created_on_one_wire_is_polled_and_cancelled_on_the_other(
    connect: Connect,
) -> None:
    async with connect() as legacy, connect(wire=MODERN) as modern:
        created = await legacy.call_tool("gate", {"key": "x"}, task={"ttl": 60_000})
        task_id = created["task"]["taskId"]
        with anyio.fail_after(5):
            await protocol_tools.STARTED["x"].wait()
        seen = await modern.get_task(task_id)
        assert seen["status"] == "working"
        assert "ttlMs" in seen
        await modern.cancel_task(task_id)
        assert (await legacy.get_task(task_id))["status"] == "cancelled"
        other = client_task = await modern.call_tool("echo", {"text": "cross"})
        assert other["resultType"] == "task"
        await settle(modern, client_task["taskId"])
        assert (await legacy.get_task(client_task["taskId"]))["status"] == "completed"


async def test_task_notifications_stream_on_subscriptions_listen(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN) as client:
        created = client.created_task(await client.call_tool("gate", {"key": "n"}))
        assert created is not None
        task_id = created["taskId"]
        with anyio.fail_after(5):
            await protocol_tools.STARTED["n"].wait()
        # fail_after may swallow its own timeout, so name the results up front.
        ack: dict[str, Any] = {}
        now: dict[str, Any] = {}
        done: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            listen = {"notifications": {"taskIds": [task_id, "not-mine-or-unknown"]}}
            tg.start_soon(client.request, "subscriptions/listen", listen)
            with anyio.fail_after(5):
                ack = await client.next_notification(
                    "notifications/subscriptions/acknowledged"
                )
                now = await client.next_notification("notifications/tasks")
                protocol_tools.GATES["n"].set()
                done = await client.next_notification("notifications/tasks")
            tg.cancel_scope.cancel()
        subscription_key = "io.modelcontextprotocol/subscriptionId"
        assert ack["params"]["notifications"]["taskIds"] == [task_id]
        assert now["params"]["status"] == "working"
        assert done["params"]["status"] == "completed"
        assert done["params"]["result"]["content"][0]["text"] == "opened n"
        subscription: object = ack["params"]["_meta"][subscription_key]
        assert done["params"]["_meta"][subscription_key] == subscription


async def test_task_notifications_need_the_extension(connect: Connect) -> None:
    async with connect(wire=MODERN, declare_tasks_extension=False) as client:
        with anyio.fail_after(5), pytest.raises(RpcError) as caught:
            await client.request(
                "subscriptions/listen", {"notifications": {"taskIds": ["any"]}}
            )
    assert caught.value.code == -32021


async def test_a_completed_tasks_result_carries_result_type_like_a_direct_call(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN) as client:
        direct = await client.call_tool("never_task", {})
        created = client.created_task(await client.call_tool("echo", {"text": "r"}))
        assert created is not None
        done = await settle(client, created["taskId"])
    assert direct["resultType"] == "complete"
    assert done["result"]["resultType"] == "complete"
    check("core", "CallToolResult", done["result"])


async def test_tasks_get_results_match_the_published_schemas(connect: Connect) -> None:
    async with connect(wire=MODERN, capabilities=FORM) as client:
        tasks: dict[str, str] = {}
        for name, arguments in [
            ("echo", {"text": "ok"}),
            ("broken", {}),
            ("refused", {}),
            ("gate", {"key": "s1"}),
            ("gate", {"key": "s2"}),
            ("confirm", {"what": "s"}),
        ]:
            result = await client.call_tool(name, arguments)
            check("ext", "CreateTaskResult", result)
            tasks[f"{name}{arguments}"] = result["taskId"]
        with anyio.fail_after(5):
            await protocol_tools.STARTED["s1"].wait()
            await protocol_tools.STARTED["s2"].wait()
        seen = {
            "completed": await settle(client, tasks["echo{'text': 'ok'}"]),
            "tool error": await settle(client, tasks["broken{}"]),
            "failed": await settle(client, tasks["refused{}"]),
            "working": await client.get_task(tasks["gate{'key': 's1'}"]),
            "input_required": await settle(
                client, tasks["confirm{'what': 's'}"], "input_required"
            ),
        }
        cancel_ack = await client.cancel_task(tasks["gate{'key': 's2'}"])
        seen["cancelled"] = await settle(client, tasks["gate{'key': 's2'}"])
        update_ack = await client.update_task(
            tasks["confirm{'what': 's'}"],
            {"confirm": {"action": "accept", "content": {"ok": True}}},
        )
        protocol_tools.GATES["s1"].set()
    assert {kind: task["status"] for kind, task in seen.items()} == {
        "completed": "completed",
        "tool error": "completed",
        "failed": "failed",
        "working": "working",
        "input_required": "input_required",
        "cancelled": "cancelled",
    }
    for task in seen.values():
        check_get_task_result(task)
    check("ext", "CancelTaskResult", cancel_ack)
    check("ext", "UpdateTaskResult", update_ack)


async def test_task_notifications_match_the_published_schemas(
    connect: Connect,
) -> None:
    async with connect(wire=MODERN, capabilities=FORM) as client:
        created = client.created_task(
            await client.call_tool("confirm", {"what": "frames"})
        )
        assert created is not None
        task_id = created["taskId"]
        await settle(client, task_id, "input_required")
        frames: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            listen = {"notifications": {"taskIds": [task_id]}}
            tg.start_soon(client.request, "subscriptions/listen", listen)
            with anyio.fail_after(5):
                await client.next_notification(
                    "notifications/subscriptions/acknowledged"
                )
                frames.append(await client.next_notification("notifications/tasks"))
                await client.update_task(
                    task_id, {"confirm": {"action": "accept", "content": {"ok": True}}}
                )
                while frames[-1]["params"]["status"] != "completed":
                    frames.append(await client.next_notification("notifications/tasks"))
            tg.cancel_scope.cancel()
    statuses = [frame["params"]["status"] for frame in frames]
    assert statuses[0] == "input_required"
    assert statuses[-1] == "completed"
    assert frames[-1]["params"]["result"]["resultType"] == "complete"
    for frame in frames:
        check_task_notification(frame)


@pytest.mark.parametrize("task", [{"ttl": 1.5}, {"ttl": "soon"}, "junk", [1]])
async def test_params_task_is_ignored_as_an_unknown_field_even_when_malformed(
    connect: Connect, task: object
) -> None:
    async with connect(wire=MODERN) as client:
        params: dict[str, Any] = {"name": "never_task", "arguments": {}, "task": task}
        direct = await client.request("tools/call", params)
        created = await client.request(
            "tools/call", {**params, "name": "echo", "arguments": {"text": "t"}}
        )
    assert direct["content"][0]["text"] == "right away"
    assert created["resultType"] == "task"
