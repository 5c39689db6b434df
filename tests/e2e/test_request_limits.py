"""A client's task requests at its rate, across two server processes on one journal.

Two ``mcp-tasks serve --http`` share one journal; alice may make two task
requests in all (a rate so low it does not refill during the test), bob his
own two. Her third request is refused with -32029 and when to retry, through
either process; bob is not affected, and the handshake is never limited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import cast

import pytest

from mcp_tasks.client import RpcError, TaskClient

from .conftest import ServerFilesFactory
from .support import HttpServer, running

pytestmark = pytest.mark.timeout(120)

LIMITED: dict[str, object] = {
    # One request per 100 s, two at once: nothing refills while the test runs.
    "requests_per_second": 0.01,
    "request_burst": 2,
    "request_delay_seconds": 0,
}
RATE_LIMITED = -32029
WIRES = ("2025-11-25", "2026-07-28")
#: Each wire's test its own clients: the journal keeps their buckets.
TOKENS = {
    (who, wire): f"{who}-{wire}-token-0123456789"
    for who in ("alice", "bob")
    for wire in WIRES
}
TOKEN_FILE: list[dict[str, object]] = [
    {"id": f"{who}-{wire}", "token": token} for (who, wire), token in TOKENS.items()
]


@pytest.fixture(scope="module")
def two_processes(
    server_files: ServerFilesFactory,
) -> Iterator[tuple[HttpServer, HttpServer]]:
    first_files = server_files("limits-a", limits=LIMITED, tokens=TOKEN_FILE)
    second_files = dataclasses.replace(
        server_files("limits-b", limits=LIMITED, tokens=TOKEN_FILE),
        db=first_files.db,  # one journal
    )
    first, second = HttpServer(first_files), HttpServer(second_files)
    with running(first, second):
        yield first, second


async def create(client: TaskClient, text: str) -> str:
    if client.wire == "2025-11-25":
        result = await client.call_tool("echo", {"text": text}, task={"ttl": 60_000})
        return str(result["task"]["taskId"])
    result = await client.call_tool("echo", {"text": text})
    task = client.created_task(result)
    assert task is not None, result
    return str(task["taskId"])


@pytest.mark.parametrize("wire", WIRES)
async def test_a_clients_rate_holds_across_processes_and_says_when_to_retry(
    two_processes: tuple[HttpServer, HttpServer], wire: str
) -> None:
    first, second = two_processes
    alice, bob_token = TOKENS["alice", wire], TOKENS["bob", wire]
    async with (
        TaskClient.http(first.url, token=alice, wire=wire) as alice_a,  # type: ignore[arg-type]
        TaskClient.http(second.url, token=alice, wire=wire) as alice_b,  # type: ignore[arg-type]
        TaskClient.http(second.url, token=bob_token, wire=wire) as bob,  # type: ignore[arg-type]
    ):
        task_id = await create(alice_a, "one")  # alice's first request, on A
        await alice_b.get_task(task_id)  # her second, on B
        refused: list[RpcError] = []
        for client in (alice_a, alice_b):
            with pytest.raises(RpcError) as caught:
                await client.get_task(task_id)
            refused.append(caught.value)
        assert await create(bob, "bob's own")  # bob has his own allowance
        # The handshake and listings are not task requests: never limited.
        await alice_a.list_tools()
    for error in refused:
        assert error.code == RATE_LIMITED
        assert f"alice-{wire}" in error.message
        data = error.data
        assert isinstance(data, dict)
        assert cast("dict[str, object]", data)["retryable"] is True
        retry = cast("dict[str, object]", data)["retryAfterMs"]
        assert isinstance(retry, int)
        assert 0 < retry <= 100_000
