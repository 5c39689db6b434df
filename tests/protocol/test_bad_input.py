"""Bad input on both wires: a proper JSON-RPC error naming the field, nothing stored.

The errors of every handler pass one guard (`binding/_guard.py`), so no
response carries code 0 or a Python exception's text, non-JSON numbers (NaN,
Infinity, 1e400) are refused wherever they are, and no error echoes more than a
short prefix of a client's value (spec-notes.md C17-C21).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, cast

import mcp_types as types
import pytest
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from mcp_tasks.binding import McpTasksServer
from mcp_tasks.client import RpcError, TaskClient

from .conftest import Connect

LEGACY = "2025-11-25"
MODERN = "2026-07-28"
HUGE = "x" * 10_000_000
#: What an error response may weigh at most, whatever the request held.
SMALL = 1_000


async def rpc_error(
    client: TaskClient, method: str, params: dict[str, Any]
) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await client.request(method, params)
    return caught.value


def field_of(error: RpcError) -> object:
    data: object = error.data
    assert isinstance(data, dict)
    return cast("dict[str, Any]", data).get("field")


def size(error: RpcError) -> int:
    return len(json.dumps({"message": error.message, "data": error.data}))


async def stored_tasks(connect: Connect) -> list[dict[str, Any]]:
    """Every task the (stdio) requestor owns, through the normal API."""
    async with connect() as client:
        return list((await client.list_tasks())["tasks"])


# ------------------------------------------------------------------- task.ttl


@pytest.mark.parametrize(
    "ttl",
    [math.nan, math.inf, -math.inf, 10**400, -1, 2**53, 1e300, "5", True, [5]],
    ids=[
        "nan",
        "inf",
        "-inf",
        "1e400",
        "negative",
        "2^53",
        "1e300",
        "str",
        "bool",
        "list",
    ],
)
async def test_a_ttl_that_is_not_a_finite_number_in_range_is_refused(
    connect: Connect, ttl: object
) -> None:
    async with connect() as client:
        error = await rpc_error(
            client,
            "tools/call",
            {"name": "echo", "arguments": {"text": "t"}, "task": {"ttl": ttl}},
        )
    assert error.code == -32602
    assert "task.ttl" in error.message
    assert error.data == {"field": "task.ttl"}
    assert await stored_tasks(connect) == []


async def test_the_largest_ttl_is_accepted_and_reported(connect: Connect) -> None:
    async with connect() as client:
        created = await client.call_tool("echo", {"text": "t"}, task={"ttl": 2**53 - 1})
        got = await client.get_task(created["task"]["taskId"])
    # Capped at the server's maximum (seven days by default) and said so.
    assert created["task"]["ttl"] == got["ttl"] == 7 * 86_400_000


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize("wire", [LEGACY, MODERN])
@pytest.mark.parametrize("as_task", [True, False], ids=["task", "direct"])
@pytest.mark.parametrize("arguments", [[], "", 0, False, "x", [{"a": 1}]])
async def test_arguments_that_are_not_an_object_are_invalid_params(
    connect: Connect, wire: str, as_task: bool, arguments: object
) -> None:
    params: dict[str, Any] = {"name": "only_task", "arguments": arguments}
    if as_task:
        params["task"] = {}
    async with connect(wire=wire) as client:
        error = await rpc_error(client, "tools/call", params)
    assert error.code == -32602
    assert "arguments" in error.message
    assert field_of(error) == "arguments"
    assert await stored_tasks(connect) == []


# --------------------------------------------------------- non-JSON numbers


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (
            {"name": "echo", "arguments": {"text": "a", "extra": math.nan}},
            "arguments.extra",
        ),
        (
            {"name": "echo", "arguments": {"text": "a", "n": [1, {"x": math.inf}]}},
            "arguments.n[1].x",
        ),
        (
            {
                "name": "echo",
                "arguments": {"text": "a"},
                "_meta": {"progressToken": math.nan},
            },
            "_meta.progressToken",
        ),
        (
            {
                "name": "echo",
                "arguments": {"text": "a"},
                "_meta": {"vendor": -math.inf},
            },
            "_meta.vendor",
        ),
    ],
    ids=["argument", "nested-argument", "progress-token", "meta"],
)
@pytest.mark.parametrize("as_task", [True, False], ids=["task", "direct"])
async def test_non_json_numbers_are_refused_wherever_they_are(
    connect: Connect, params: dict[str, Any], field: str, as_task: bool
) -> None:
    if as_task:
        params = {**params, "task": {}}
    async with connect() as client:
        error = await rpc_error(client, "tools/call", params)
    assert error.code == -32602
    assert error.data == {"field": field}
    assert f"Invalid params: {field}: must be a finite number" in error.message
    assert await stored_tasks(connect) == []


async def test_a_non_json_number_in_an_answer_is_refused(connect: Connect) -> None:
    form: dict[str, Any] = {"elicitation": {"form": {}}}
    async with connect(wire=MODERN, capabilities=form) as client:
        created = await client.call_tool("confirm", {"what": "n"})
        task_id = created["taskId"]
        await client.poll_task(task_id, until=("input_required",))
        error = await rpc_error(
            client,
            "tasks/update",
            {
                "taskId": task_id,
                "inputResponses": {
                    "confirm": {"action": "accept", "content": {"ok": math.nan}}
                },
            },
        )
        still = await client.get_task(task_id)
    assert error.code == -32602
    assert error.data == {"field": "inputResponses.confirm.content.ok"}
    assert still["status"] == "input_required"


# ----------------------------------------------------------- echoed values


@pytest.mark.parametrize(
    ("wire", "method", "params"),
    [
        (LEGACY, "tasks/get", {"taskId": HUGE}),
        (LEGACY, "tasks/result", {"taskId": HUGE}),
        (LEGACY, "tasks/cancel", {"taskId": HUGE}),
        (LEGACY, "tasks/list", {"cursor": HUGE}),
        (LEGACY, "tools/call", {"name": HUGE, "arguments": {}, "task": {}}),
        (LEGACY, "tools/call", {"name": HUGE, "arguments": {}}),
        (LEGACY, HUGE, {}),
        (MODERN, "tasks/get", {"taskId": HUGE}),
        (MODERN, "tasks/cancel", {"taskId": HUGE}),
        (MODERN, "tasks/update", {"taskId": HUGE, "inputResponses": {}}),
        (MODERN, "tools/call", {"name": HUGE, "arguments": {}}),
        (MODERN, HUGE, {}),
    ],
    ids=[
        "get",
        "result",
        "cancel",
        "list-cursor",
        "task-tool-name",
        "tool-name",
        "method",
        "2026-get",
        "2026-cancel",
        "2026-update",
        "2026-tool-name",
        "2026-method",
    ],
)
async def test_an_error_echoes_at_most_a_short_prefix_of_a_10_mb_value(
    connect: Connect, wire: str, method: str, params: dict[str, Any]
) -> None:
    async with connect(wire=wire) as client:
        error = await rpc_error(client, method, params)
        alive = await client.call_tool("never_task", {})
    assert error.code in (-32601, -32602)
    assert size(error) < SMALL, (error.message[:200], str(error.data)[:200])
    if method != HUGE:  # the SDK answers an unknown method with its own words
        assert "10000000 characters" in error.message
    assert alive["content"][0]["text"] == "right away"


@pytest.mark.parametrize("as_task", [True, False], ids=["task", "direct"])
async def test_a_huge_wrong_argument_is_not_echoed(
    connect: Connect, as_task: bool
) -> None:
    # Just under the size limit for arguments (1 MB by default); the tool's
    # JSON schema validator quotes the whole value in its message.
    params: dict[str, Any] = {
        "name": "counted",
        "arguments": {"count": "9x" * 250_000},
    }
    if as_task:
        params["task"] = {}
    async with connect() as client:
        if as_task:
            error = await rpc_error(client, "tools/call", params)
            message, data = error.message, error.data
        else:  # a tool execution error the model can read (decision C15)
            result = await client.request("tools/call", params)
            message, data = result["content"][0]["text"], None
    assert "count" in message
    assert "is not of type 'integer'" in message
    assert len(json.dumps({"message": message, "data": data})) < SMALL


async def test_a_huge_answer_is_not_echoed(connect: Connect) -> None:
    form: dict[str, Any] = {"elicitation": {"form": {}}}
    async with connect(wire=MODERN, capabilities=form) as client:
        created = await client.call_tool("confirm", {"what": "h"})
        await client.poll_task(created["taskId"], until=("input_required",))
        error = await rpc_error(
            client,
            "tasks/update",
            {
                "taskId": created["taskId"],
                "inputResponses": {
                    "confirm": {"action": "accept", "content": {"ok": HUGE}}
                },
            },
        )
    assert error.code == -32602
    assert size(error) < SMALL


# ------------------------------------------------------------- the guard


async def _boom(
    ctx: ServerRequestContext[Any, Any], params: types.RequestParams
) -> Any:
    raise RuntimeError("secret internals")


async def _internal_model(
    ctx: ServerRequestContext[Any, Any], params: types.RequestParams
) -> Any:
    return types.CallToolResult.model_validate({"content": "not a list"})


async def _grouped(
    ctx: ServerRequestContext[Any, Any], params: types.RequestParams
) -> Any:
    raise ExceptionGroup(
        "wrapped", [MCPError(-32602, "Invalid params: x: bad", {"field": "x"})]
    )


@pytest.mark.parametrize("wire", [LEGACY, MODERN])
async def test_an_unexpected_exception_is_an_internal_error_logged_not_echoed(
    server: McpTasksServer,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    wire: str,
) -> None:
    server.server.add_request_handler("test/boom", types.RequestParams, _boom)
    server.server.add_request_handler(
        "test/internal-model", types.RequestParams, _internal_model
    )
    server.server.add_request_handler("test/grouped", types.RequestParams, _grouped)
    with caplog.at_level(logging.ERROR, logger="mcp_tasks.binding.guard"):
        async with connect(wire=wire) as client:
            boom = await rpc_error(client, "test/boom", {})
            model = await rpc_error(client, "test/internal-model", {})
            grouped = await rpc_error(client, "test/grouped", {})
            alive = await client.call_tool("never_task", {})
    assert (boom.code, boom.message, boom.data) == (-32603, "Internal error", None)
    # A model of our own failing is our bug, not the client's params.
    assert (model.code, model.message) == (-32603, "Internal error")
    assert (grouped.code, grouped.data) == (-32602, {"field": "x"})
    assert alive["content"][0]["text"] == "right away"
    logged = [r for r in caplog.records if r.name == "mcp_tasks.binding.guard"]
    assert [r.getMessage() for r in logged] == [
        "test/boom failed",
        "test/internal-model failed",
    ]
    assert logged[0].exc_info is not None
    assert "secret internals" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("wire", [LEGACY, MODERN])
async def test_params_failing_their_model_are_invalid_params_naming_the_field(
    connect: Connect, wire: str
) -> None:
    async with connect(wire=wire) as client:
        get = await rpc_error(client, "tasks/get", {"taskId": 5})
        token = await rpc_error(
            client,
            "tools/call",
            {
                "name": "echo",
                "arguments": {"text": "a"},
                "_meta": {"progressToken": [1]},
            },
        )
    assert get.code == token.code == -32602
    assert get.message == "Invalid params: taskId: Input should be a valid string"
    assert field_of(get) == "taskId"
    assert field_of(token) == "_meta.progressToken"
    assert "5" not in get.message.removeprefix("Invalid params: taskId")
