"""Two ``mcp-tasks serve --http`` processes on one PostgreSQL database.

The same promises as on one SQLite file (`test_many_processes`): a task
accepted by one process is polled, answered and fetched through the other,
and the task of a process killed with ``kill -9`` is finished by the other.
One process names the database with ``--db``, the other with ``[journal] db``
in its config file. The operator commands run as processes of their own on the
same database, as an operator runs them next to live servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from .support import E2E_TOOLS, TIMEOUT, EventHub, Gates, obj, text_of
from .test_many_processes import (
    ASK_TOOL,
    ELICIT,
    LEGACY,
    MANY_TOOLS,
    MODERN,
    Replica,
    client,
    create,
    make_journal,
    poll_until,
    result_text,
)

pytestmark = pytest.mark.timeout(120)


class Pair:
    """Server processes on one PostgreSQL database."""

    def __init__(self, root: Path, events: Path, url: str) -> None:
        self.files = make_journal(root, events)
        config = self.files.root / "config.toml"
        # The config file names the database; a --db would override it.
        config.write_text(
            config.read_text().replace("[journal]\n", f'[journal]\ndb = "{url}"\n')
        )
        self.url = url
        self.replicas: list[Replica] = []

    def replica(self, name: str, *, db_flag: bool) -> Replica:
        root = self.files.root
        argv = [
            sys.executable, "-m", "mcp_tasks", "serve",
            "--http", "127.0.0.1:0", "--log-level", "INFO",
            "--config", str(root / "config.toml"),
            "--tokens", str(root / "tokens.toml"),
            "--tools", str(E2E_TOOLS), "--tools", str(MANY_TOOLS),
            "--tools", str(ASK_TOOL),
        ]  # fmt: skip
        if db_flag:
            argv += ["--db", self.url]
        replica = Replica(name, argv, root / f"{name}.log")
        self.replicas.append(replica)
        return replica

    def stop_all(self) -> None:
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def pair(tmp_path: Path, events_path: Path, postgres_db_url: str) -> Iterator[Pair]:
    made = Pair(tmp_path / "pg", events_path, postgres_db_url)
    try:
        yield made
    finally:
        made.stop_all()


async def test_a_task_accepted_by_one_process_is_followed_and_answered_through_the_other(
    pair: Pair, gates: Gates, hub: EventHub
) -> None:
    a = pair.replica("A", db_flag=True)
    b = pair.replica("B", db_flag=False)
    await anyio.to_thread.run_sync(a.start)
    await anyio.to_thread.run_sync(b.start)
    assert "journal postgresql://" in b.log_text()  # from the config file
    key = gates.key()
    async with client(a, LEGACY) as on_a, client(b, LEGACY) as on_b:
        task_id = await create(on_a, "gate", {"key": key})
        await hub.wait("started", key)
        assert obj(await on_b.get_task(task_id))["status"] == "working"
        gates.release(key)
        done = await poll_until(on_b, task_id, {"completed"})
        with anyio.fail_after(TIMEOUT):
            payload = await on_b.task_result(task_id)
    assert done["status"] == "completed"
    assert text_of(payload) == f"released {key}"
    async with (
        client(a, MODERN, capabilities=ELICIT) as on_a,
        client(b, MODERN, capabilities=ELICIT) as on_b,
    ):
        task_id = await create(
            on_a, "ask", {"question": "Which way?", "choices": ["left", "right"]}
        )
        waiting = await poll_until(on_b, task_id, {"input_required"})
        (question,) = obj(waiting["inputRequests"]).keys()
        answer = {"action": "accept", "content": {"answer": "left"}}
        await on_b.update_task(task_id, {question: answer})
        done = await poll_until(on_b, task_id, {"completed"})
    assert result_text(on_b, done) == "left"


async def test_a_killed_process_s_task_is_finished_by_the_other(
    pair: Pair, gates: Gates, hub: EventHub
) -> None:
    first = pair.replica("first", db_flag=True)
    await anyio.to_thread.run_sync(first.start)
    key = gates.key()
    async with client(first, LEGACY) as on_first:
        task_id = await create(on_first, "gate", {"key": key})
        await hub.wait("started", key, attempt=1)
    second = pair.replica("second", db_flag=True)
    await anyio.to_thread.run_sync(second.start)
    await anyio.to_thread.run_sync(first.kill)
    await hub.wait("started", key, attempt=2)
    gates.release(key)
    async with client(second, LEGACY) as on_second:
        done = await poll_until(on_second, task_id, {"completed"})
        with anyio.fail_after(TIMEOUT):
            payload = await on_second.task_result(task_id)
    assert done["status"] == "completed"
    assert text_of(payload) == f"released {key}"


async def operator(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``mcp-tasks ARGS --db URL`` as its own process (an operator's shell)."""
    with anyio.fail_after(2 * TIMEOUT):
        return await anyio.run_process(
            [sys.executable, "-m", "mcp_tasks", *args, "--db", url], check=False
        )


async def operator_json(url: str, *args: str) -> Any:
    done = await operator(url, *args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def test_operator_commands_list_and_cancel_a_running_task_on_postgresql(
    pair: Pair, gates: Gates, hub: EventHub
) -> None:
    server = pair.replica("A", db_flag=True)
    await anyio.to_thread.run_sync(server.start)
    key = gates.key()
    async with client(server, LEGACY) as on_server:
        task_id = await create(on_server, "gate", {"key": key})
        await hub.wait("started", key)
        queued = await create(on_server, "echo", {"text": "later"})
        await poll_until(on_server, queued, {"completed"})
        rows = await operator_json(pair.url, "tasks", "list")
        assert [(r["taskId"], r["phase"]) for r in rows] == [
            (queued, "done"),
            (task_id, "running"),
        ]  # newest first
        assert rows[1]["holder"]
        assert rows[1]["attempts"] == 1
        running = await operator_json(pair.url, "tasks", "list", "--status", "working")
        assert [r["taskId"] for r in running] == [task_id]
        done = await operator(pair.url, "tasks", "cancel", task_id)
        assert done.returncode == 0, done.stderr.decode()
        assert "cancelled" in done.stdout.decode()
        await hub.wait("stopped", key)  # the server's run itself was stopped
        cancelled = await poll_until(on_server, task_id, {"cancelled"})
    assert cancelled["status"] == "cancelled"
    shown = await operator_json(pair.url, "tasks", "show", task_id)
    (event,) = [
        e
        for e in shown["events"]
        if (e["kind"], e["status"]) == ("status", "cancelled")
    ]
    assert event["by"].startswith("operator:")
    again = await operator(pair.url, "tasks", "cancel", task_id)
    assert again.returncode == 1
    assert "terminal status 'cancelled'" in again.stderr.decode()
