"""Direct answers are exactly what the SDK's path answers (spec-notes C67).

Two real ``mcp-tasks serve --http`` processes share one journal: one as
shipped (task creation, ``tasks/get`` and a finished task's ``tasks/result``
answered by ``mcp_tasks.binding._direct``), one with ``[http] direct_answers
= false`` (every request through mcp's dispatch). The same raw request goes
to both and the answers are compared: HTTP status, content type, session
header and body, byte for byte (a created task's id and times aside).
Requests the direct path must leave to the SDK (bad params, a missing or
wrong ``Mcp-Name``, no extension declared, a 2026-07-28 envelope on a
2025-11-25 session, an unfinished task's ``tasks/result``, synchronous and
unknown calls) are compared too. The metric each process keeps shows the
direct path answered on one and never on the other, so these tests fail if
the direct path is removed or stops being taken.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import anyio
import httpx2
import pytest

from mcp_tasks.client import TaskClient

from .conftest import ServerFilesFactory
from .support import TIMEOUT, Gates, HttpServer, rpc_error, running, start_task

pytestmark = pytest.mark.timeout(120)

LEGACY = "2025-11-25"
MODERN = "2026-07-28"
EXTENSION = "io.modelcontextprotocol/tasks"
JSON_AND_SSE = "application/json, text/event-stream"
ENVELOPE: dict[str, Any] = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}},
    "io.modelcontextprotocol/clientInfo": {
        "name": "direct-answers-test",
        "version": "1",
    },
}
DIRECT_METRIC = re.compile(
    r'^mcp_tasks_http_direct_answers_total\{method="([^"]+)"\} (\S+)$', re.M
)


@dataclasses.dataclass
class Pair:
    """The same journal served twice: direct reads on, and off."""

    direct: HttpServer
    sdk: HttpServer


@pytest.fixture(scope="module")
def pair(server_files: ServerFilesFactory) -> Iterator[Pair]:
    direct_files = server_files("direct-answers-on")
    sdk_files = dataclasses.replace(
        server_files(
            "direct-answers-off", extra_toml="[http]\ndirect_answers = false\n"
        ),
        db=direct_files.db,
    )
    direct, sdk = HttpServer(direct_files), HttpServer(sdk_files)
    with running(direct, sdk):
        yield Pair(direct, sdk)


class LegacySession:
    """A 2025-11-25 session in raw HTTP."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = {"content-type": "application/json", "accept": JSON_AND_SSE}

    async def open(self) -> LegacySession:
        hello = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "direct-answers-test", "version": "1"},
            },
        }
        answer = await self.http.post(self.url, headers=self.headers, json=hello)
        assert answer.status_code == 200, answer.text
        self.headers |= {
            "mcp-session-id": answer.headers["mcp-session-id"],
            "mcp-protocol-version": LEGACY,
        }
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        done = await self.http.post(self.url, headers=self.headers, json=initialized)
        assert done.status_code == 202
        return self

    async def post(self, body: dict[str, Any] | str) -> httpx2.Response:
        """POST ``body`` (a JSON value, or JSON text as it is to be sent)."""
        if isinstance(body, str):
            return await self.http.post(self.url, headers=self.headers, content=body)
        return await self.http.post(self.url, headers=self.headers, json=body)


def request(method: str, params: object, request_id: int | str = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def modern_headers(name: str | None, method: str = "tasks/get") -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": JSON_AND_SSE,
        "mcp-protocol-version": MODERN,
        "mcp-method": method,
    }
    if name is not None:
        headers["mcp-name"] = name
    return headers


#: What differs between two answers creating two tasks from the same request.
CREATED_FIELDS = ("taskId", "createdAt", "lastUpdatedAt")


def created_shape(response: httpx2.Response) -> tuple[int, str, bool, object]:
    """`shape` of an answer that created a task, its id and times blanked."""

    def blank(value: object) -> object:
        if isinstance(value, dict):
            items = cast("dict[str, object]", value).items()
            return {k: "…" if k in CREATED_FIELDS else blank(v) for k, v in items}
        if isinstance(value, list):
            return [blank(v) for v in cast("list[object]", value)]
        return value

    status, kind, session, _ = shape(response)
    return status, kind, session, blank(response.json())


def shape(response: httpx2.Response) -> tuple[int, str, bool, bytes]:
    """What a client sees of an answer, but for the session id (one per server)."""
    return (
        response.status_code,
        response.headers.get("content-type", ""),
        "mcp-session-id" in response.headers,
        response.content,
    )


def direct_answers(text: str) -> dict[str, float]:
    return {method: float(count) for method, count in DIRECT_METRIC.findall(text)}


async def metrics(http: httpx2.AsyncClient, server: HttpServer) -> dict[str, float]:
    answer = await http.get(server.url.removesuffix("/mcp") + "/metrics")
    assert answer.status_code == 200, answer.text
    return direct_answers(answer.text)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


async def finished_tasks(pair: Pair, gates: Gates) -> dict[str, str]:
    """Tasks in every status, made through the direct server; name -> task id."""
    hub = gates.hub
    async with TaskClient.http(pair.direct.url) as client:

        async def start(tool: str, arguments: dict[str, Any]) -> str:
            task_id = (await start_task(client, tool, arguments))["taskId"]
            assert isinstance(task_id, str)
            return task_id

        working, cancelled = gates.key(), gates.key()
        ids = {
            "completed": await start("echo", {"text": "hi"}),
            "tool_error": await start("tool_error", {"message": "no"}),
            "failed": await start("protocol_error", {"code": -32602, "message": "bad"}),
            "working": await start("gate", {"key": working}),
            "cancelled": await start("gate", {"key": cancelled}),
        }
        with anyio.fail_after(TIMEOUT):
            await hub.wait("started", working)
            await hub.wait("started", cancelled)
            await client.cancel_task(ids["cancelled"])
            for name in ("completed", "tool_error", "cancelled"):
                await client.task_result(ids[name])
            await rpc_error(lambda: client.task_result(ids["failed"]))
            await hub.wait("stopped", cancelled)
        return ids


async def test_2025_task_reads_answer_as_the_sdk_does(
    pair: Pair, http: httpx2.AsyncClient, gates: Gates
) -> None:
    ids = await finished_tasks(pair, gates)
    before = await metrics(http, pair.direct)
    on_direct = await LegacySession(http, pair.direct.url).open()
    on_sdk = await LegacySession(http, pair.sdk.url).open()
    bodies = [request("tasks/get", {"taskId": task_id}) for task_id in ids.values()]
    bodies += [
        request("tasks/result", {"taskId": ids[name]}, request_id="r-" + name)
        for name in ("completed", "tool_error", "failed", "cancelled")
    ]
    bodies += [
        request("tasks/get", {"taskId": "no-such-task"}),
        request("tasks/result", {"taskId": "no-such-task"}),
        request(
            "tasks/get", {"taskId": ids["completed"], "_meta": {"progressToken": 3}}
        ),
        # Left to the SDK: params that do not validate, a 2026-07-28 envelope.
        request("tasks/get", {"taskId": 5}),
        request("tasks/get", {}),
        request("tasks/get", {"taskId": ids["completed"], "_meta": ENVELOPE}),
    ]
    for body in bodies:
        direct, sdk = await on_direct.post(body), await on_sdk.post(body)
        assert shape(direct) == shape(sdk), body
        assert direct.headers["content-type"] == "application/json"
    after = await metrics(http, pair.direct)
    # The 5 gets, the unknown task's and the one with a progress token; the 4
    # finished tasks' results (an unknown task's result is the SDK's).
    assert after.get("tasks/get", 0) - before.get("tasks/get", 0) == 7
    assert after.get("tasks/result", 0) - before.get("tasks/result", 0) == 4
    assert await metrics(http, pair.sdk) == {}


async def test_2025_unfinished_tasks_result_is_left_to_the_sdk(
    pair: Pair, http: httpx2.AsyncClient, gates: Gates
) -> None:
    """A blocking tasks/result still waits, on the session's stream, for the end."""
    key = gates.key()
    async with TaskClient.http(pair.direct.url) as client:
        task_id = (await start_task(client, "gate", {"key": key}))["taskId"]
    with anyio.fail_after(TIMEOUT):
        await gates.hub.wait("started", key)
    before = await metrics(http, pair.direct)
    session = await LegacySession(http, pair.direct.url).open()
    answers: list[httpx2.Response] = []
    async with anyio.create_task_group() as tg:

        async def blocked() -> None:
            answers.append(
                await session.post(request("tasks/result", {"taskId": task_id}))
            )

        tg.start_soon(blocked)
        await anyio.wait_all_tasks_blocked()
        assert answers == []
        gates.release(key)
    (answer,) = answers
    assert answer.status_code == 200
    after = await metrics(http, pair.direct)
    assert after.get("tasks/result", 0) == before.get("tasks/result", 0)


async def test_2026_task_reads_answer_as_the_sdk_does(
    pair: Pair, http: httpx2.AsyncClient, gates: Gates
) -> None:
    ids = await finished_tasks(pair, gates)
    before = await metrics(http, pair.direct)
    cases: list[tuple[dict[str, str], dict[str, Any]]] = [
        (
            modern_headers(task_id),
            request("tasks/get", {"taskId": task_id, "_meta": ENVELOPE}),
        )
        for task_id in ids.values()
    ]
    unknown = "no-such-task"
    cases.append(
        (
            modern_headers(unknown),
            request("tasks/get", {"taskId": unknown, "_meta": ENVELOPE}),
        )
    )
    completed = ids["completed"]
    bare = {k: v for k, v in ENVELOPE.items() if "clientCapabilities" not in k}
    bare["io.modelcontextprotocol/clientCapabilities"] = {}
    cases += [
        # Left to the SDK: no Mcp-Name, the wrong one, no extension declared,
        # no envelope, a bad task id.
        (
            modern_headers(None),
            request("tasks/get", {"taskId": completed, "_meta": ENVELOPE}),
        ),
        (
            modern_headers(ids["failed"]),
            request("tasks/get", {"taskId": completed, "_meta": ENVELOPE}),
        ),
        (
            modern_headers(completed),
            request("tasks/get", {"taskId": completed, "_meta": bare}),
        ),
        (modern_headers(completed), request("tasks/get", {"taskId": completed})),
        (modern_headers("5"), request("tasks/get", {"taskId": 5, "_meta": ENVELOPE})),
    ]
    for headers, body in cases:
        direct = await http.post(pair.direct.url, headers=headers, json=body)
        sdk = await http.post(pair.sdk.url, headers=headers, json=body)
        assert shape(direct) == shape(sdk), (headers, body)
    after = await metrics(http, pair.direct)
    assert after.get("tasks/get", 0) - before.get("tasks/get", 0) == len(ids) + 1
    assert await metrics(http, pair.sdk) == {}
    # The answer is the extension's DetailedTask, with its result inlined.
    answer = await http.post(
        pair.direct.url,
        headers=modern_headers(completed),
        json=request("tasks/get", {"taskId": completed, "_meta": ENVELOPE}),
    )
    result = answer.json()["result"]
    assert result["status"] == "completed"
    assert result["resultType"] == "complete"
    assert result["result"]["structuredContent"] == {"text": "hi"} or result["result"]


async def test_2025_task_creation_answers_as_the_sdk_does(
    pair: Pair, http: httpx2.AsyncClient
) -> None:
    before = await metrics(http, pair.direct)
    on_direct = await LegacySession(http, pair.direct.url).open()
    on_sdk = await LegacySession(http, pair.sdk.url).open()
    task = {"ttl": 60_000}
    created = [
        request(
            "tools/call", {"name": "echo", "arguments": {"text": "a"}, "task": task}
        ),
        request(
            "tools/call",
            {
                "name": "echo",
                "arguments": {"text": "b"},
                "task": {},
                "_meta": {"progressToken": "p-1"},
            },
        ),
    ]
    refused: list[dict[str, Any] | str] = [
        # Arguments the tool's schema refuses.
        request("tools/call", {"name": "echo", "arguments": {"text": 5}, "task": task}),
        # A number that is not a double (sent as JSON text: 1e400).
        json.dumps(
            request(
                "tools/call", {"name": "echo", "arguments": {"text": 1.5}, "task": task}
            )
        ).replace("1.5", "1e400"),
        # Params the model refuses (answered directly, in the SDK's words).
        request("tools/call", {"name": "echo", "arguments": [], "task": task}),
        # Left to the SDK: a tool that never runs as a task, an unknown tool,
        # a synchronous call.
        request(
            "tools/call", {"name": "no_task", "arguments": {"text": "c"}, "task": task}
        ),
        request("tools/call", {"name": "nope", "arguments": {}, "task": task}),
        request("tools/call", {"name": "echo", "arguments": {"text": "d"}}),
    ]
    for body in created:
        direct, sdk = await on_direct.post(body), await on_sdk.post(body)
        assert created_shape(direct) == created_shape(sdk), body
        assert direct.json()["result"]["task"]["status"] == "working"
    for body in refused:
        direct, sdk = await on_direct.post(body), await on_sdk.post(body)
        assert shape(direct) == shape(sdk), body
    after = await metrics(http, pair.direct)
    # The two tasks and echo's three refusals (the schema, a number that is
    # not a double, arguments that are not an object), as the SDK words them.
    assert after.get("tools/call", 0) - before.get("tools/call", 0) == 5
    assert await metrics(http, pair.sdk) == {}


async def test_2026_task_creation_answers_as_the_sdk_does(
    pair: Pair, http: httpx2.AsyncClient
) -> None:
    before = await metrics(http, pair.direct)
    bare = {k: v for k, v in ENVELOPE.items() if "clientCapabilities" not in k}
    bare["io.modelcontextprotocol/clientCapabilities"] = {}

    def call(name: str, arguments: object, meta: dict[str, Any]) -> dict[str, Any]:
        return request(
            "tools/call", {"name": name, "arguments": arguments, "_meta": meta}
        )

    created = [
        call("echo", {"text": "a"}, ENVELOPE),
        call("task_only", {"text": "b"}, ENVELOPE),
    ]
    others = [
        # A tool error the model reads: arguments the schema refuses.
        call("echo", {"text": 5}, ENVELOPE),
        # Left to the SDK: no extension declared (a synchronous call, or
        # -32021 for a task-only tool), a tool that never runs as a task.
        call("echo", {"text": "c"}, bare),
        call("task_only", {"text": "d"}, bare),
        call("no_task", {"text": "e"}, ENVELOPE),
    ]
    for body in created:
        headers = modern_headers(body["params"]["name"], "tools/call")
        direct = await http.post(pair.direct.url, headers=headers, json=body)
        sdk = await http.post(pair.sdk.url, headers=headers, json=body)
        assert created_shape(direct) == created_shape(sdk), body
        assert direct.json()["result"]["resultType"] == "task"
    for body in others:
        headers = modern_headers(body["params"]["name"], "tools/call")
        direct = await http.post(pair.direct.url, headers=headers, json=body)
        sdk = await http.post(pair.sdk.url, headers=headers, json=body)
        assert shape(direct) == shape(sdk), body
    after = await metrics(http, pair.direct)
    assert after.get("tools/call", 0) - before.get("tools/call", 0) == 3
    assert await metrics(http, pair.sdk) == {}


def test_the_metric_pattern_reads_an_exposition() -> None:
    text = (
        "# TYPE mcp_tasks_http_direct_answers_total counter\n"
        'mcp_tasks_http_direct_answers_total{method="tasks/get"} 3.0\n'
    )
    assert direct_answers(text) == {"tasks/get": 3.0}
    assert json.dumps(direct_answers("")) == "{}"
