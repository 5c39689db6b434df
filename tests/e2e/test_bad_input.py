"""Non-JSON and out-of-range ``task.ttl`` against a real ``mcp-tasks serve``, as raw bytes.

Python clients cannot send ``NaN`` or ``Infinity`` (they serialise them as
``null``), but both of the SDK's JSON readers accept the literals, and
``1e400`` reads as Infinity. So these tests write the request bodies by hand:
line by line over stdio, and as POST bodies over Streamable HTTP. The server
has no cap on retention (``max_ttl_seconds = 0``), the setting under which an
Infinity ttl once made every later ``tasks/list`` and ``tasks/get`` fail with
code 0 for good (spec-notes.md C17).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from .support import (
    ALICE_TOKEN,
    TIMEOUT,
    HttpServer,
    ServerFiles,
    make_server_files,
)

pytestmark = pytest.mark.timeout(60)

#: ``task.ttl`` literals as they appear in the body, and none may be stored.
BAD_TTLS = ["NaN", "Infinity", "-Infinity", "1e400", "-1", "9007199254740992", '"5"']
LEGACY = "2025-11-25"

Rpc = Callable[[int, str, str], Awaitable[dict[str, Any]]]
"""Sends ``(id, method, params as raw JSON text)``; returns the response message."""


def request(request_id: int, method: str, params: str) -> bytes:
    """A JSON-RPC request whose params are raw JSON text (literals kept as written)."""
    return (
        f'{{"jsonrpc":"2.0","id":{request_id},"method":"{method}","params":{params}}}'
    ).encode()


INITIALIZE = json.dumps(
    {
        "protocolVersion": LEGACY,
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    }
)
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def server_files(tmp_path: Path, *, http: bool) -> ServerFiles:
    # Over HTTP a token identifies the client, so tasks/list is served there too.
    return make_server_files(
        tmp_path / "server",
        events=tmp_path / "unused.sock",
        limits={"max_ttl_seconds": 0, "poll_interval_seconds": 0.05},
        tokens=[{"id": "alice", "token": ALICE_TOKEN}] if http else None,
    )


async def check_bad_ttls_and_recovery(rpc: Rpc) -> str:
    """Every bad ttl refused naming ``task.ttl``; a good task afterwards; its id."""
    for number, literal in enumerate(BAD_TTLS, start=10):
        call = '{"name":"echo","arguments":{"text":"t"},"task":{"ttl":' + literal + "}}"
        answer = await rpc(number, "tools/call", call)
        error = answer.get("error")
        assert error is not None, (literal, answer)
        assert error["code"] == -32602, (literal, error)
        assert "task.ttl" in error["message"], (literal, error)
        assert error["data"] == {"field": "task.ttl"}, (literal, error)
    arguments = await rpc(30, "tools/call", '{"name":"echo","arguments":[],"task":{}}')
    assert arguments["error"]["code"] == -32602
    assert arguments["error"]["data"]["field"] == "arguments"
    good = await rpc(
        40,
        "tools/call",
        '{"name":"echo","arguments":{"text":"t"},"task":{"ttl":600000}}',
    )
    task_id = str(good["result"]["task"]["taskId"])
    listed = await rpc(41, "tasks/list", "{}")
    assert [t["taskId"] for t in listed["result"]["tasks"]] == [task_id]
    got = await rpc(42, "tasks/get", json.dumps({"taskId": task_id}))
    assert got["result"]["ttl"] == 600_000
    return task_id


def check_journal(db: Path, task_id: str) -> None:
    """Only the good task was stored, with a finite ttl and expiry."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT task_id, ttl_seconds, expires_at FROM tasks"
        ).fetchall()
    assert [row[0] for row in rows] == [task_id]
    assert math.isfinite(rows[0][1])
    assert math.isfinite(rows[0][2])


# ------------------------------------------------------------------- stdio


@asynccontextmanager
async def raw_stdio(files: ServerFiles) -> AsyncGenerator[tuple[Process, Rpc]]:
    with files.log.open("ab") as log:
        async with await anyio.open_process(
            files.argv(), cwd=files.root, stderr=log
        ) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            lines = BufferedByteReceiveStream(process.stdout)
            stdin = process.stdin

            async def rpc(request_id: int, method: str, params: str) -> dict[str, Any]:
                await stdin.send(request(request_id, method, params) + b"\n")
                with anyio.fail_after(TIMEOUT):
                    while True:  # skip notifications the server sends meanwhile
                        line = await lines.receive_until(b"\n", 10_000_000)
                        message = cast("dict[str, Any]", json.loads(line))
                        if message.get("id") == request_id:
                            return message

            yield process, rpc


async def test_bad_ttls_over_stdio_are_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    files = server_files(tmp_path, http=False)
    async with raw_stdio(files) as (process, rpc):
        hello = await rpc(1, "initialize", INITIALIZE)
        assert hello["result"]["protocolVersion"] == LEGACY
        assert process.stdin is not None
        await process.stdin.send(INITIALIZED + b"\n")
        task_id = await check_bad_ttls_and_recovery(rpc)
        await process.stdin.aclose()
        with anyio.fail_after(TIMEOUT):
            assert await process.wait() == 0
    check_journal(files.db, task_id)


# -------------------------------------------------------------------- HTTP


def _answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a POST answer (plain JSON or one SSE event)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message = cast("dict[str, Any]", json.loads(line[5:]))
                if "id" in message:
                    return message
        raise AssertionError(f"no response in the event stream: {response.text!r}")
    return cast("dict[str, Any]", response.json())


async def test_bad_ttls_over_http_are_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    files = server_files(tmp_path, http=True)
    server = HttpServer(files)
    await anyio.to_thread.run_sync(server.start)
    try:
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {ALICE_TOKEN}",
        }
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            hello = await http.post(
                server.url,
                headers=headers,
                content=request(1, "initialize", INITIALIZE),
            )
            assert _answer(hello)["result"]["protocolVersion"] == LEGACY
            headers |= {
                "mcp-session-id": hello.headers["mcp-session-id"],
                "mcp-protocol-version": LEGACY,
            }
            initialized = await http.post(
                server.url, headers=headers, content=INITIALIZED
            )
            assert initialized.status_code == 202

            async def rpc(request_id: int, method: str, params: str) -> dict[str, Any]:
                body = request(request_id, method, params)
                return _answer(
                    await http.post(server.url, headers=headers, content=body)
                )

            task_id = await check_bad_ttls_and_recovery(rpc)
            await http.delete(server.url, headers=headers)
    finally:
        code = await anyio.to_thread.run_sync(server.stop)
    assert code == 0, server.log_text()
    check_journal(files.db, task_id)
