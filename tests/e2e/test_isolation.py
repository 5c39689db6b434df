"""Who sees what, and how much one client may queue: tokens and backlogs, e2e.

Over HTTP with a token file, every task is bound to the token's client: the
other client cannot list, read, wait on or cancel it (``-32602`` "not found",
so existence does not leak), and a request without a valid token gets HTTP
401. A client whose backlog (unfinished tasks) is full gets ``-32000`` and
nothing is stored.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anyio
import httpx2
import pytest

from mcp_tasks.client import JSONObject, TaskClient

from .conftest import ServerFilesFactory
from .support import (
    ALICE_TOKEN,
    BOB_TOKEN,
    CAPACITY_EXCEEDED,
    INVALID_PARAMS,
    TIMEOUT,
    EventHub,
    Gates,
    HttpServer,
    ServerFiles,
    obj,
    objects,
    rpc_error,
    start_task,
    stdio_client,
    text_of,
)

pytestmark = pytest.mark.timeout(60)

CAROL_TOKEN = "carol-token-0123456789abcdef"
DAVE_TOKEN = "dave-token-0123456789abcdef"
ERIN_TOKEN = "erin-token-0123456789abcdef"
BACKLOG_LIMITS: dict[str, object] = {"client_backlog": 2}
BACKLOG_TOKENS: list[dict[str, object]] = [
    {"id": "carol", "token": CAROL_TOKEN},
    # Per-client overrides: in the token file (dave) and in the config (erin).
    {"id": "dave", "token": DAVE_TOKEN, "backlog": 3},
    {"id": "erin", "token": ERIN_TOKEN},
]
BACKLOG_EXTRA = "\n[clients.erin]\nbacklog = 3\n"

INITIALIZE: JSONObject = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}


async def all_task_ids(client: TaskClient) -> set[str]:
    """Every task id ``tasks/list`` shows ``client``, across all pages."""
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        page = await client.list_tasks(cursor)
        ids |= {str(task["taskId"]) for task in objects(page["tasks"])}
        next_cursor = page.get("nextCursor")
        if next_cursor is None:
            return ids
        cursor = str(next_cursor)


# ---------------------------------------------------------------- tokens


async def test_each_client_sees_only_its_own_tasks(
    http_auth_server: HttpServer, hub: EventHub, gates: Gates
) -> None:
    key = gates.key()
    url = http_auth_server.url
    with anyio.fail_after(TIMEOUT * 2):
        async with (
            TaskClient.http(url, token=ALICE_TOKEN) as alice,
            TaskClient.http(url, token=BOB_TOKEN) as bob,
        ):
            running = str((await start_task(alice, "gate", {"key": key}))["taskId"])
            finished = str((await start_task(alice, "echo", {"text": "a"}))["taskId"])
            await alice.task_result(finished)
            bobs = str((await start_task(bob, "echo", {"text": "b"}))["taskId"])
            await bob.task_result(bobs)
            await hub.wait("started", key)

            alice_sees = await all_task_ids(alice)
            bob_sees = await all_task_ids(bob)
            assert {running, finished} <= alice_sees
            assert bobs not in alice_sees
            assert bobs in bob_sees
            assert not {running, finished} & bob_sees

            for task_id in (running, finished):
                for call in (bob.get_task, bob.task_result, bob.cancel_task):
                    error = await rpc_error(lambda c=call, t=task_id: c(t))
                    assert error.code == INVALID_PARAMS, call
                    assert "not found" in error.message.lower()

            # Bob's cancel did nothing: Alice's task still runs, then finishes.
            assert (await alice.get_task(running))["status"] == "working"
            assert not hub.seen("stopped", key)
            gates.release(key)
            result = await alice.task_result(running)
            assert text_of(result) == f"released {key}"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-valid-token-at-all"},
        {"Authorization": "Basic YWxpY2U6eA=="},
    ],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_requests_without_a_valid_token_get_401(
    http_auth_server: HttpServer, headers: dict[str, str]
) -> None:
    request_headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        **headers,
    }
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient() as http:
            refused = await http.post(
                http_auth_server.url, json=INITIALIZE, headers=request_headers
            )
            accepted = await http.post(
                http_auth_server.url,
                json=INITIALIZE,
                headers={**request_headers, "Authorization": f"Bearer {ALICE_TOKEN}"},
            )
    assert refused.status_code == 401
    assert "bearer" in refused.headers.get("www-authenticate", "").lower()
    assert accepted.status_code == 200


# --------------------------------------------------------------- backlog


@pytest.fixture(scope="module")
def backlog_http(server_files: ServerFilesFactory) -> Iterator[HttpServer]:
    """An HTTP server with tokens whose clients may each queue 2 unfinished tasks."""
    server = HttpServer(
        server_files(
            "backlog-http",
            limits=BACKLOG_LIMITS,
            tokens=BACKLOG_TOKENS,
            extra_toml=BACKLOG_EXTRA,
        )
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["stdio", "http-auth"])
async def backlog_client(
    request: pytest.FixtureRequest,
    server_files: ServerFilesFactory,
    hub: EventHub,
    backlog_http: HttpServer,
) -> AsyncGenerator[TaskClient]:
    """A client whose backlog is 2: its own stdio server, or ``carol`` over HTTP."""
    if request.param == "http-auth":
        async with TaskClient.http(backlog_http.url, token=CAROL_TOKEN) as client:
            yield client
        return
    files: ServerFiles = server_files("backlog-stdio", limits=BACKLOG_LIMITS)
    with files.log.open("a") as errlog:
        async with stdio_client(files, errlog) as client:
            yield client


async def fill_backlog(
    client: TaskClient, gates: Gates, hub: EventHub, limit: int
) -> tuple[list[str], list[str]]:
    """Start ``limit`` gated tasks; return their keys and task ids."""
    keys = [gates.key() for _ in range(limit)]
    ids = [str((await start_task(client, "gate", {"key": k}))["taskId"]) for k in keys]
    for key in keys:
        await hub.wait("started", key)
    return keys, ids


async def test_backlog_overflow_is_refused_and_nothing_is_stored(
    backlog_client: TaskClient, hub: EventHub, gates: Gates
) -> None:
    client = backlog_client
    with anyio.fail_after(TIMEOUT * 2):
        keys, ids = await fill_backlog(client, gates, hub, 2)
        refused_key = gates.key()
        error = await rpc_error(
            lambda: start_task(client, "gate", {"key": refused_key})
        )
        assert error.code == CAPACITY_EXCEEDED
        data: Any = obj(error.data)
        assert data["limit"] == 2
        assert data["retryable"] is True
        # Nothing was stored for the refused call: the list still shows two.
        listed = objects((await client.list_tasks())["tasks"])
        assert sorted(str(t["taskId"]) for t in listed) == sorted(ids)
        assert "nextCursor" not in await client.list_tasks()
        # Finishing a task frees its slot.
        gates.release(keys[0])
        await client.task_result(ids[0])
        third = await start_task(client, "echo", {"text": "fits again"})
        result = await client.task_result(str(third["taskId"]))
        assert obj(result["structuredContent"])["text"] == "fits again"
        gates.release(keys[1])
        await client.task_result(ids[1])
    assert not hub.seen("started", refused_key)


@pytest.mark.parametrize(
    "token", [DAVE_TOKEN, ERIN_TOKEN], ids=["token-file", "config"]
)
async def test_per_client_backlog_override_applies(
    backlog_http: HttpServer, hub: EventHub, gates: Gates, token: str
) -> None:
    """dave (token file ``backlog = 3``) and erin (``[clients.erin]``) may queue 3."""
    with anyio.fail_after(TIMEOUT * 2):
        async with TaskClient.http(backlog_http.url, token=token) as client:
            try:
                keys, ids = await fill_backlog(client, gates, hub, 3)
                error = await rpc_error(
                    lambda: start_task(client, "echo", {"text": "one too many"})
                )
                assert error.code == CAPACITY_EXCEEDED
                assert obj(error.data)["limit"] == 3
                for key, task_id in zip(keys, ids, strict=True):
                    gates.release(key)
                    await client.task_result(task_id)
            finally:
                gates.release_all()
