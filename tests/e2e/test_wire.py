"""The 2025-11-25 task wire against a real ``mcp-tasks serve`` subprocess.

Every test runs over stdio and over Streamable HTTP (``transport``); the
listing tests run over stdio and over HTTP with bearer tokens, the two setups
where requestors are identified. Results come from ``tasks/result``, which
blocks; a ``gate`` body's start and stop are reported by the body itself
(`EventHub`); notifications are awaited, never polled for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
import pytest

from mcp_tasks.client import JSONObject, TaskClient

from .support import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RELATED_TASK,
    TIMEOUT,
    EventHub,
    Gates,
    obj,
    objects,
    rpc_error,
    start_task,
    text_of,
    wait_notification,
    without_meta,
)

pytestmark = pytest.mark.timeout(60)

TASK_KEYS = {"taskId", "status", "createdAt", "lastUpdatedAt", "ttl", "pollInterval"}
#: The shared servers' limits (conftest.SHARED_LIMITS), in milliseconds.
MAX_TTL_MS = 3_600_000
DEFAULT_TTL_MS = 600_000
POLL_INTERVAL_MS = 500
PAGE_SIZE = 50


def parse_time(value: object) -> datetime:
    assert isinstance(value, str)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def related_task_id(result: JSONObject) -> object:
    return obj(obj(result["_meta"])[RELATED_TASK])["taskId"]


# ----------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    ("transport", "listable"),
    [("stdio", True), ("http", False), ("http-auth", True)],
    indirect=["transport"],
)
async def test_initialize_advertises_tasks(client: TaskClient, listable: bool) -> None:
    tasks = obj(client.server_capabilities["tasks"])
    assert obj(obj(obj(tasks["requests"])["tools"])["call"]) == {}
    assert obj(tasks["cancel"]) == {}
    # tasks/list only where requestors are identified (stdio, or HTTP + tokens).
    assert ("list" in tasks) is listable
    assert client.connect_result["protocolVersion"] == "2025-11-25"


async def test_tools_list_declares_task_support(client: TaskClient) -> None:
    tools = {t["name"]: t for t in objects((await client.list_tools())["tools"])}
    support = {name: obj(t["execution"])["taskSupport"] for name, t in tools.items()}
    assert support == {
        "gate": "optional",
        "echo": "optional",
        "progress": "optional",
        "progress_gate": "optional",
        "progress_steps": "optional",
        "tool_error": "optional",
        "protocol_error": "optional",
        "task_only": "required",
        "no_task": "forbidden",
    }
    schema = obj(tools["echo"]["inputSchema"])
    assert obj(schema["properties"]).keys() == {"text", "repeat"}


# ------------------------------------------------------------ task creation


async def test_task_augmented_call_returns_a_working_task(client: TaskClient) -> None:
    with anyio.fail_after(TIMEOUT):
        result = await client.call_tool("echo", {"text": "hi"}, task={"ttl": 60_000})
    assert set(result) <= {"task", "_meta"}
    task = obj(result["task"])
    assert TASK_KEYS <= task.keys()
    assert task["status"] == "working"
    assert isinstance(task["taskId"], str)
    assert task["taskId"]
    assert task["ttl"] == 60_000
    assert task["pollInterval"] == POLL_INTERVAL_MS
    created = parse_time(task["createdAt"])
    assert created.tzinfo is not None
    assert parse_time(task["lastUpdatedAt"]) >= created


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        ({"ttl": 120_000}, 120_000),
        ({"ttl": MAX_TTL_MS}, MAX_TTL_MS),
        ({"ttl": MAX_TTL_MS * 1000}, MAX_TTL_MS),
        ({}, DEFAULT_TTL_MS),
    ],
    ids=["small", "at-max", "above-max", "none"],
)
async def test_ttl_is_honoured_up_to_the_configured_maximum(
    client: TaskClient, requested: JSONObject, granted: int
) -> None:
    # (A finished task is kept at least 60 s after it ends, and its ttl then
    # says so; every ttl here is longer than that, so it stays as granted.)
    with anyio.fail_after(TIMEOUT):
        created = obj(
            (await client.call_tool("echo", {"text": "t"}, task=requested))["task"]
        )
        assert created["ttl"] == granted
        fetched = await client.get_task(str(created["taskId"]))
    assert fetched["ttl"] == granted


async def test_tasks_get_returns_the_task(client: TaskClient, gates: Gates) -> None:
    key = gates.key()
    with anyio.fail_after(TIMEOUT):
        created = await start_task(client, "gate", {"key": key})
        task_id = str(created["taskId"])
        fetched = await client.get_task(task_id)
        assert TASK_KEYS <= fetched.keys()
        assert fetched["taskId"] == task_id
        assert fetched["status"] == "working"
        assert fetched["createdAt"] == created["createdAt"]
        assert fetched["ttl"] == created["ttl"]
        assert RELATED_TASK not in obj(fetched.get("_meta", {}))
        gates.release(key)
        await client.task_result(task_id)
        done = await client.get_task(task_id)
    assert done["status"] == "completed"
    assert done["createdAt"] == created["createdAt"]
    assert parse_time(done["lastUpdatedAt"]) >= parse_time(created["lastUpdatedAt"])


# ---------------------------------------------------------------- results


async def test_tasks_result_is_exactly_the_tool_result(client: TaskClient) -> None:
    arguments = {"text": "ab", "repeat": 3}
    with anyio.fail_after(TIMEOUT):
        direct = await client.call_tool("echo", arguments)
        task = await start_task(client, "echo", arguments)
        result = await client.task_result(str(task["taskId"]))
        status = (await client.get_task(str(task["taskId"])))["status"]
    assert related_task_id(result) == task["taskId"]
    assert without_meta(result) == without_meta(direct)
    assert result["structuredContent"] == {"text": "ababab", "repeat": 3}
    assert result.get("isError") is False
    assert status == "completed"


async def test_tasks_result_blocks_until_the_task_ends(
    client: TaskClient, gates: Gates, hub: EventHub
) -> None:
    key = gates.key()
    results: list[JSONObject] = []
    with anyio.fail_after(TIMEOUT):
        task = await start_task(client, "gate", {"key": key})
        await hub.wait("started", key)

        async def wait_result() -> None:
            results.append(await client.task_result(str(task["taskId"])))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_result)
            # The gate is closed, so tasks/result cannot have answered; a
            # tasks/get round trip on the same connection proves it is pending.
            assert (await client.get_task(str(task["taskId"])))["status"] == "working"
            assert results == []
            gates.release(key)
    assert text_of(results[0]) == f"released {key}"
    assert related_task_id(results[0]) == task["taskId"]


async def test_tool_error_result_makes_the_task_failed(client: TaskClient) -> None:
    arguments = {"message": "the disk is full"}
    with anyio.fail_after(TIMEOUT):
        direct = await client.call_tool("tool_error", arguments)
        task = await start_task(client, "tool_error", arguments)
        result = await client.task_result(str(task["taskId"]))
        fetched = await client.get_task(str(task["taskId"]))
    assert direct["isError"] is True
    assert without_meta(result) == without_meta(direct)
    assert text_of(result) == "the disk is full"
    assert related_task_id(result) == task["taskId"]
    assert fetched["status"] == "failed"
    assert "the disk is full" in str(fetched.get("statusMessage"))


async def test_protocol_error_is_returned_by_tasks_result(client: TaskClient) -> None:
    arguments = {"code": -32042, "message": "upstream refused the request"}
    with anyio.fail_after(TIMEOUT):
        direct = await rpc_error(lambda: client.call_tool("protocol_error", arguments))
        task = await start_task(client, "protocol_error", arguments)
        error = await rpc_error(lambda: client.task_result(str(task["taskId"])))
        fetched = await client.get_task(str(task["taskId"]))
    assert (error.code, error.message, error.data) == (
        -32042,
        "upstream refused the request",
        {"tool": "protocol_error"},
    )
    assert (direct.code, direct.message, direct.data) == (
        error.code,
        error.message,
        error.data,
    )
    assert fetched["status"] == "failed"


async def test_call_without_task_answers_synchronously(client: TaskClient) -> None:
    with anyio.fail_after(TIMEOUT):
        result = await client.call_tool("echo", {"text": "now"})
    assert "task" not in result
    assert result["structuredContent"] == {"text": "now", "repeat": 1}
    assert text_of(result) == '{"text":"now","repeat":1}'


# ------------------------------------------------------------ cancellation


async def test_cancel_running_task_stops_the_work(
    client: TaskClient, gates: Gates, hub: EventHub
) -> None:
    key = gates.key()
    with anyio.fail_after(TIMEOUT):
        task = await start_task(client, "gate", {"key": key})
        task_id = str(task["taskId"])
        await hub.wait("started", key)
        cancelled = await client.cancel_task(task_id)
        assert cancelled["taskId"] == task_id
        assert cancelled["status"] == "cancelled"
        assert TASK_KEYS <= cancelled.keys()
        await hub.wait("stopped", key)  # the body itself saw the cancellation
        assert (await client.get_task(task_id))["status"] == "cancelled"
        result = await client.task_result(task_id)
        assert result["isError"] is True
        assert related_task_id(result) == task_id
        await wait_notification(
            client,
            "notifications/tasks/status",
            lambda p: p.get("taskId") == task_id and p.get("status") == "cancelled",
        )
        # A late release changes nothing: the body is gone, the status stays.
        gates.release(key)
        again = await rpc_error(lambda: client.cancel_task(task_id))
        assert (await client.get_task(task_id))["status"] == "cancelled"
    assert again.code == INVALID_PARAMS
    assert not hub.seen("released", key)


async def test_cancel_of_a_terminal_task_is_invalid_params(client: TaskClient) -> None:
    with anyio.fail_after(TIMEOUT):
        task = await start_task(client, "echo", {"text": "done"})
        task_id = str(task["taskId"])
        await client.task_result(task_id)
        error = await rpc_error(lambda: client.cancel_task(task_id))
        status = (await client.get_task(task_id))["status"]
    assert error.code == INVALID_PARAMS
    assert "terminal" in error.message
    assert obj(error.data)["taskId"] == task_id
    assert status == "completed"


# ----------------------------------------------------------- notifications


async def test_status_notifications_follow_transitions(
    client: TaskClient, gates: Gates, hub: EventHub
) -> None:
    key = gates.key()
    with anyio.fail_after(TIMEOUT):
        task = await start_task(client, "gate", {"key": key})
        task_id = str(task["taskId"])
        await hub.wait("started", key)
        gates.release(key)
        await client.task_result(task_id)
        params = await wait_notification(
            client,
            "notifications/tasks/status",
            lambda p: p.get("taskId") == task_id and p.get("status") == "completed",
        )
    assert TASK_KEYS <= params.keys()
    assert params["createdAt"] == task["createdAt"]
    assert RELATED_TASK not in obj(params.get("_meta", {}))
    statuses = [
        obj(n["params"])["status"]
        for n in client.notifications
        if n["method"] == "notifications/tasks/status"
        and obj(n["params"]).get("taskId") == task_id
    ]
    assert statuses[-1] == "completed"
    assert set(statuses) <= {"working", "completed"}


async def test_progress_uses_the_original_progress_token(client: TaskClient) -> None:
    token = f"progress-{id(client)}-{anyio.current_time()}"
    steps = 4
    with anyio.fail_after(TIMEOUT):
        task = await start_task(
            client, "progress", {"steps": steps}, progress_token=token
        )
        result = await client.task_result(str(task["taskId"]))
        seen = [
            await wait_notification(
                client,
                "notifications/progress",
                lambda p, s=step: (
                    p.get("progressToken") == token and p.get("progress") == s
                ),
            )
            for step in range(1, steps + 1)
        ]
    assert text_of(result) == f"{steps} steps"
    assert [(p["progress"], p["total"]) for p in seen] == [
        (step, steps) for step in range(1, steps + 1)
    ]
    assert seen[0]["message"] == f"step 1 of {steps}"


# ------------------------------------------------------------- task support


async def test_required_tool_without_task_is_method_not_found(
    client: TaskClient,
) -> None:
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(lambda: client.call_tool("task_only", {"text": "x"}))
        task = await start_task(client, "task_only", {"text": "x"})
        result = await client.task_result(str(task["taskId"]))
    assert error.code == METHOD_NOT_FOUND
    assert text_of(result) == "task_only: x"


async def test_forbidden_tool_with_task_is_method_not_found(
    client: TaskClient,
) -> None:
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(
            lambda: client.call_tool("no_task", {"text": "x"}, task={"ttl": 1000})
        )
        result = await client.call_tool("no_task", {"text": "x"})
    assert error.code == METHOD_NOT_FOUND
    assert text_of(result) == "no_task: x"


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize("method", ["tasks/get", "tasks/result", "tasks/cancel"])
async def test_unknown_task_id_is_invalid_params(
    client: TaskClient, method: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(
            lambda: client.request(method, {"taskId": "no-such-task"})
        )
    assert error.code == INVALID_PARAMS
    assert "not found" in error.message.lower()


WRONG_ARGUMENTS = pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"text": 123}, "text"),
        ({"text": "x", "repeat": "many"}, "repeat"),
        ({}, "text"),
        ({"text": "x", "colour": "red"}, "colour"),
    ],
    ids=["int-for-str", "str-for-int", "missing", "unexpected"],
)


@WRONG_ARGUMENTS
async def test_wrong_arguments_refuse_a_task_with_invalid_params_naming_the_field(
    client: TaskClient, arguments: JSONObject, field: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(
            lambda: client.call_tool("echo", arguments, task={"ttl": 1000})
        )
    assert error.code == INVALID_PARAMS
    assert field in error.message
    errors = objects(obj(error.data)["errors"])
    assert [e["field"] for e in errors] == [field]


@WRONG_ARGUMENTS
async def test_wrong_arguments_on_a_direct_call_are_a_tool_error_naming_the_field(
    client: TaskClient, arguments: JSONObject, field: str
) -> None:
    # 2025-11-25 server/tools (SEP-1303): input validation errors are tool
    # execution errors, so the model can read them and correct the call.
    with anyio.fail_after(TIMEOUT):
        result = await client.call_tool("echo", arguments)
    assert result["isError"] is True
    assert field in result["content"][0]["text"]


@pytest.mark.parametrize("as_task", [False, True], ids=["sync", "task"])
async def test_unknown_tool_is_invalid_params(
    client: TaskClient, as_task: bool
) -> None:
    task = {"ttl": 1000} if as_task else None
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(lambda: client.call_tool("no_such_tool", {}, task=task))
    assert error.code == INVALID_PARAMS
    assert "no_such_tool" in error.message


@pytest.mark.parametrize("as_task", [False, True], ids=["sync", "task"])
async def test_oversized_arguments_are_invalid_params(
    client: TaskClient, as_task: bool
) -> None:
    task = {"ttl": 1000} if as_task else None
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(
            lambda: client.call_tool("echo", {"text": "x" * 4096}, task=task)
        )
        # Just under the limit (2048 bytes of JSON) is accepted.
        ok = await client.call_tool("echo", {"text": "x" * 2000})
    assert error.code == INVALID_PARAMS
    assert "arguments" in error.message
    assert "2048" in error.message
    assert obj(ok["structuredContent"])["text"] == "x" * 2000


@pytest.mark.parametrize("ttl", [-1, "soon", True])
async def test_bad_ttl_is_invalid_params(client: TaskClient, ttl: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(
            lambda: client.call_tool("echo", {"text": "x"}, task={"ttl": ttl})
        )
    assert error.code == INVALID_PARAMS
    assert "ttl" in error.message


# ----------------------------------------------------------------- listing


LISTING = pytest.mark.parametrize("transport", ["stdio", "http-auth"], indirect=True)


@LISTING
async def test_tasks_list_pages_through_own_tasks(client: TaskClient) -> None:
    with anyio.fail_after(TIMEOUT * 2):
        mine: set[str] = set()
        for index in range(PAGE_SIZE + 1):
            task = await start_task(client, "echo", {"text": f"t{index}"})
            mine.add(str(task["taskId"]))
        pages: list[list[JSONObject]] = []
        cursor: str | None = None
        while True:
            page = await client.list_tasks(cursor)
            pages.append(objects(page["tasks"]))
            next_cursor = page.get("nextCursor")
            if next_cursor is None:
                break
            assert isinstance(next_cursor, str)
            cursor = next_cursor
    listed = [str(task["taskId"]) for page in pages for task in page]
    assert len(pages) >= 2
    assert all(len(page) <= PAGE_SIZE for page in pages)
    assert len(listed) == len(set(listed)), "a task was listed twice"
    assert mine <= set(listed)
    assert all(TASK_KEYS <= task.keys() for page in pages for task in page)


@LISTING
@pytest.mark.parametrize("cursor", ["garbage", "", "AAAAAAAAAAAAAAAAAAAAAAAAAAA"])
async def test_bad_cursor_is_invalid_params(client: TaskClient, cursor: str) -> None:
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(lambda: client.list_tasks(cursor))
    assert error.code == INVALID_PARAMS
    assert "cursor" in error.message


@pytest.mark.parametrize("transport", ["http"], indirect=True)
async def test_tasks_list_without_identified_clients_is_method_not_found(
    client: TaskClient,
) -> None:
    with anyio.fail_after(TIMEOUT):
        error = await rpc_error(lambda: client.list_tasks())
    assert error.code == METHOD_NOT_FOUND
