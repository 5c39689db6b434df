"""One server, one journal, both task wires: a task is reachable from either.

A real ``mcp-tasks serve --http`` subprocess with bearer tokens, so the same
client id owns its tasks on both wires (SEP-2663: a dual-flow server SHOULD
let tasks/get and tasks/cancel work on tasks created under the other flow).
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from mcp_tasks.client import TaskClient

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "both-wires-token-0123456789"
LISTENING = re.compile(rb"listening on (http://[^\s]+/mcp)")
ELICIT: dict[str, Any] = {"elicitation": {"form": {}}}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def server_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncGenerator[str]:
    folder = tmp_path_factory.mktemp("both-wires")
    tokens = folder / "tokens.toml"
    tokens.write_text(f'[[client]]\nid = "alice"\ntoken = "{TOKEN}"\n')
    config = folder / "config.toml"
    config.write_text("[limits]\npoll_interval_seconds = 0.05\n")
    command = [
        sys.executable, "-m", "mcp_tasks", "serve", "--http", "127.0.0.1:0",
        "--db", str(folder / "tasks.db"), "--tokens", str(tokens),
        "--config", str(config), "--tools", str(ROOT / "tools"),
    ]  # fmt: skip
    async with await anyio.open_process(command, cwd=ROOT) as process:
        try:
            with anyio.fail_after(20):
                url = await _wait_until_listening(process, folder / "server.log")
            async with anyio.create_task_group() as tg:
                tg.start_soon(_keep_draining, process, folder / "server.log")
                yield url
                tg.cancel_scope.cancel()
        finally:
            process.terminate()
            with anyio.move_on_after(10):
                await process.wait()


async def _wait_until_listening(process: Process, log: Path) -> str:
    assert process.stderr is not None
    seen = b""
    async for chunk in process.stderr:
        seen += chunk
        found = LISTENING.search(seen)
        if found:
            await anyio.Path(log).write_bytes(seen)
            return found.group(1).decode()
    raise AssertionError(f"server exited before listening:\n{seen.decode()}")


async def _keep_draining(process: Process, log: Path) -> None:
    # Read the server's log to its end so it never blocks on a full pipe.
    assert process.stderr is not None
    with log.open("ab") as out:
        async for chunk in process.stderr:
            out.write(chunk)


async def test_a_task_created_on_one_wire_is_polled_and_cancelled_on_the_other(
    server_url: str,
) -> None:
    async with (
        TaskClient.http(server_url, token=TOKEN, wire="2025-11-25") as legacy,
        TaskClient.http(server_url, token=TOKEN, wire="2026-07-28") as modern,
    ):
        created = await legacy.call_tool("wait", {"seconds": 60}, task={"ttl": 600_000})
        task_id = created["task"]["taskId"]
        seen = await modern.get_task(task_id)
        assert seen["status"] == "working"
        assert seen["ttlMs"] == 600_000
        assert await modern.cancel_task(task_id) == {
            "resultType": "complete",
            "_meta": seen["_meta"],
        }
        cancelled = await legacy.get_task(task_id)
        assert cancelled["status"] == "cancelled"
        with anyio.fail_after(5):
            payload = await legacy.task_result(task_id)
        assert payload["isError"] is True


async def test_a_question_of_a_2026_task_is_answered_by_a_2025_session(
    server_url: str,
) -> None:
    asked: list[dict[str, Any]] = []

    async def answer(method: str, params: dict[str, Any]) -> dict[str, Any]:
        asked.append({"method": method, **params})
        return {"action": "accept", "content": {"answer": "yes"}}

    async with (
        TaskClient.http(
            server_url,
            token=TOKEN,
            wire="2025-11-25",
            capabilities=ELICIT,
            on_request=answer,
        ) as legacy,
        TaskClient.http(
            server_url, token=TOKEN, wire="2026-07-28", capabilities=ELICIT
        ) as modern,
    ):
        created = modern.created_task(
            await modern.call_tool(
                "ask", {"question": "Ship it?", "choices": ["yes", "no"]}
            )
        )
        assert created is not None
        with anyio.fail_after(10):
            done = await modern.poll_task(created["taskId"])
        from_legacy = await legacy.get_task(created["taskId"])
    assert done["status"] == "completed"
    assert done["result"]["content"][0]["text"] == "yes"
    assert asked[0]["method"] == "elicitation/create"
    assert from_legacy["status"] == "completed"
