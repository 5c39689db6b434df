"""A real server behind a reverse proxy: allowed hosts and origins, client addresses.

The proxy is simulated by sending what a proxy sends: its public ``Host``
name, a browser's ``Origin``, and ``X-Forwarded-For``. The "proxied" server
names the host and origin in ``[http]`` and trusts 127.0.0.1 (where the test
runs) as a proxy; the "direct" server trusts no proxy. Both let each client
have one unfinished task, so whether two requests share a fairness and backlog
lane shows in whether the second one is refused with -32000.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from mcp_tasks.client import TaskClient

from .conftest import ServerFilesFactory
from .support import CAPACITY_EXCEEDED, Gates, HttpServer, obj, rpc_error

pytestmark = pytest.mark.timeout(60)

PUBLIC_HOST = "mcp.example.test"
APP_ORIGIN = "https://app.example.test"
ONE_TASK_EACH: dict[str, object] = {"client_backlog": 1, "client_concurrency": 1}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "proxy-test", "version": "1"},
    },
}


def started(server: HttpServer) -> Iterator[HttpServer]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxied(server_files: ServerFilesFactory) -> Iterator[HttpServer]:
    files = server_files(
        "proxied",
        limits=ONE_TASK_EACH,
        extra_toml=(
            "[http]\n"
            f'allowed_hosts = ["{PUBLIC_HOST}"]\n'
            f'allowed_origins = ["{APP_ORIGIN}"]\n'
            'trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n'
        ),
    )
    yield from started(HttpServer(files))


@pytest.fixture(scope="module")
def direct(server_files: ServerFilesFactory) -> Iterator[HttpServer]:
    yield from started(HttpServer(server_files("direct", limits=ONE_TASK_EACH)))


async def initialize_status(server: HttpServer, headers: dict[str, str]) -> int:
    """The HTTP status of a plain ``initialize`` POST with ``headers``."""
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            server.url,
            json=INITIALIZE,
            headers={"Accept": "application/json, text/event-stream", **headers},
        )
    return response.status_code


async def test_the_public_host_name_is_served(proxied: HttpServer) -> None:
    async with TaskClient.http(proxied.url, headers={"Host": PUBLIC_HOST}) as client:
        result = await client.call_tool("echo", {"text": "through the proxy"})
    assert obj(result["structuredContent"])["text"] == "through the proxy"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": PUBLIC_HOST, "Origin": APP_ORIGIN}, 200),
        ({"Host": f"{PUBLIC_HOST}:8443"}, 200),
        ({"Host": "localhost"}, 200),
        ({"Host": "evil.example.test"}, 421),
        ({"Host": PUBLIC_HOST, "Origin": "https://evil.example.test"}, 403),
    ],
)
async def test_hosts_and_origins_are_checked(
    proxied: HttpServer, headers: dict[str, str], status: int
) -> None:
    assert await initialize_status(proxied, headers) == status


async def start_gated(client: TaskClient, gates: Gates, forwarded_for: str) -> str:
    """A held task for the client at ``forwarded_for``; its id."""
    result = await client.call_tool(
        "gate", {"key": gates.key()}, headers={"X-Forwarded-For": forwarded_for}
    )
    task = client.created_task(result)
    assert task is not None, result
    return str(task["taskId"])


async def test_clients_behind_a_trusted_proxy_have_their_own_lanes(
    proxied: HttpServer, gates: Gates
) -> None:
    async with TaskClient.http(proxied.url, wire="2026-07-28") as client:
        # The proxy at 10.0.0.5 (trusted) forwarded for 203.0.113.1.
        await start_gated(client, gates, "198.51.100.66, 203.0.113.1, 10.0.0.5")
        # Backlog of 203.0.113.1 is full; the left-most entry is the
        # client's own claim, so it cannot pick another lane.
        refused = await rpc_error(
            lambda: start_gated(client, gates, "203.0.113.2, 203.0.113.1")
        )
        assert refused.code == CAPACITY_EXCEEDED
        # Another client behind the same proxy is not held up.
        await start_gated(client, gates, "203.0.113.2")


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    direct: HttpServer, gates: Gates
) -> None:
    async with TaskClient.http(direct.url, wire="2026-07-28") as client:
        await start_gated(client, gates, "203.0.113.1")
        refused = await rpc_error(lambda: start_gated(client, gates, "203.0.113.2"))
        assert refused.code == CAPACITY_EXCEEDED
