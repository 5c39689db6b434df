"""Several ``mcp-tasks serve --http`` processes on one journal file.

The journal is the only state: a task accepted by one process is polled,
answered, cancelled and fetched through any other, on both wires; a question
asked by a run on one process reaches a session held by another; a cancel
through one stops the run on another; a killed process's task is finished by
another (at once: it sees the dead pid), and a paused one's after its lease
runs out, its late result refused; a client's cap of one holds across all of
them, seen from the tool bodies' own start and end times; a symlinked path
to the journal is the same journal.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from mcp_tasks.client import JSONObject, TaskClient

from .support import (
    E2E_TOOLS,
    EXIT_WAIT,
    TIMEOUT,
    EventHub,
    Gates,
    ServerOutput,
    obj,
    objects,
    start_task,
    text_of,
)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
MANY_TOOLS = Path(__file__).with_name("many_tools.py")
ASK_TOOL = ROOT / "tools" / "ask.py"
ALICE = "alice-many-token-0123456789"
CAPPED = "capped-many-token-0123456789"
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ELICIT: dict[str, Any] = {"elicitation": {"form": {}}}
#: Short leases so that a paused process loses its work within the test.
LEASE_SECONDS = 2.0


@dataclass
class Replica:
    """One server process on the shared journal."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    output: ServerOutput | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the process; return once it listens."""
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        self.output = ServerOutput(self.process.stdout, self.log)
        port = self.output.port(TIMEOUT)
        if port is None:
            raise RuntimeError(f"{self.name} exited early:\n{self.log.read_text()}")
        self.port = port

    def kill(self) -> None:
        """``kill -9`` it and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(EXIT_WAIT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # if a test paused it
            self.process.terminate()
            try:
                self.process.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(EXIT_WAIT)
        if self.output is not None:
            self.output.join()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@dataclass
class Journal:
    """The files every replica of one journal shares, and how to start one."""

    root: Path
    db: Path
    replicas: list[Replica] = field(default_factory=list[Replica])

    def replica(self, name: str, db: Path | None = None) -> Replica:
        argv = [
            sys.executable, "-m", "mcp_tasks", "serve",
            "--http", "127.0.0.1:0", "--log-level", "INFO",
            "--db", str(db or self.db),
            "--config", str(self.root / "config.toml"),
            "--tokens", str(self.root / "tokens.toml"),
            "--tools", str(E2E_TOOLS), "--tools", str(MANY_TOOLS),
            "--tools", str(ASK_TOOL),
        ]  # fmt: skip
        replica = Replica(name, argv, self.root / f"{name}.log")
        self.replicas.append(replica)
        return replica

    def stop_all(self) -> None:
        for replica in self.replicas:
            replica.stop()


def make_journal(root: Path, events: Path) -> Journal:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(
        f"""[limits]
workers = 8
client_concurrency = 8
lease_seconds = {LEASE_SECONDS}
poll_interval_seconds = 0.2
shutdown_grace_seconds = 0.2
sweep_interval_seconds = 3600

[journal]
feed_poll_seconds = 0.05

[clients.capped]
concurrency = 1

[tools.gate]
events = "{events}"

[tools.timed]
events = "{events}"
intervals = "{root / "intervals.txt"}"
"""
    )
    (root / "tokens.toml").write_text(
        f'[[client]]\nid = "alice"\ntoken = "{ALICE}"\n\n'
        f'[[client]]\nid = "capped"\ntoken = "{CAPPED}"\n'
    )
    return Journal(root, root / "tasks.db")


@pytest.fixture(scope="module")
def shared(e2e_root: Path, events_path: Path) -> Iterator[Journal]:
    """Three replicas, A, B and C, on one journal for the whole module."""
    journal = make_journal(e2e_root / "many", events_path)
    try:
        for name in ("A", "B", "C"):
            journal.replica(name).start()
        yield journal
    finally:
        journal.stop_all()


@pytest.fixture
def fresh(tmp_path: Path, events_path: Path) -> Iterator[Journal]:
    """A journal of this test's own, for tests that kill or pause its servers."""
    journal = make_journal(tmp_path / "own", events_path)
    try:
        yield journal
    finally:
        journal.stop_all()


@asynccontextmanager
async def client(
    replica: Replica,
    wire: str,
    *,
    token: str = ALICE,
    on_request: Any = None,
    capabilities: Mapping[str, Any] | None = None,
) -> AsyncGenerator[TaskClient]:
    async with TaskClient.http(
        replica.url,
        token=token,
        wire=wire,  # type: ignore[arg-type]
        capabilities=capabilities,
        on_request=on_request,
    ) as opened:
        yield opened


async def create(opened: TaskClient, tool: str, arguments: Mapping[str, Any]) -> str:
    """A task of ``tool``, created on whichever wire ``opened`` speaks."""
    if opened.wire == LEGACY:
        return str((await start_task(opened, tool, arguments))["taskId"])
    result = await opened.call_tool(tool, arguments)
    task = opened.created_task(result)
    assert task is not None, result
    return str(task["taskId"])


async def poll_until(
    opened: TaskClient, task_id: str, statuses: set[str]
) -> JSONObject:
    """``tasks/get`` at the suggested interval until the status is one of ``statuses``."""
    with anyio.fail_after(TIMEOUT):
        return await opened.poll_task(task_id, until=statuses)


def result_text(opened: TaskClient, task: Mapping[str, Any]) -> str:
    return text_of(obj(task["result"])) if opened.wire == MODERN else ""


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("wire", [LEGACY, MODERN])
async def test_a_task_accepted_by_one_process_is_followed_through_another(
    shared: Journal, gates: Gates, hub: EventHub, wire: str
) -> None:
    a, b, c = shared.replicas
    key = gates.key()
    async with (
        client(a, wire) as on_a,
        client(b, wire) as on_b,
        client(c, wire) as on_c,
    ):
        task_id = await create(on_a, "gate", {"key": key})
        await hub.wait("started", key)
        seen = obj(await on_b.get_task(task_id))
        assert seen["status"] == "working"
        gates.release(key)
        done = await poll_until(on_c, task_id, {"completed"})
        if wire == LEGACY:
            with anyio.fail_after(TIMEOUT):
                payload = await on_b.task_result(task_id)
            assert text_of(payload) == f"released {key}"
        else:
            assert result_text(on_c, done) == f"released {key}"


async def test_tasks_result_held_on_one_process_returns_when_another_finishes_the_run(
    shared: Journal, gates: Gates, hub: EventHub
) -> None:
    a, b, _ = shared.replicas
    key = gates.key()
    async with client(a, LEGACY) as on_a, client(b, LEGACY) as on_b:
        task_id = await create(on_a, "gate", {"key": key})
        await hub.wait("started", key)
        results: list[JSONObject] = []

        async def hold() -> None:
            results.append(await on_b.task_result(task_id))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await anyio.wait_all_tasks_blocked()
                assert results == []  # still running
                gates.release(key)
    assert text_of(results[0]) == f"released {key}"


@pytest.mark.parametrize("wire", [LEGACY, MODERN])
async def test_a_cancel_through_one_process_stops_the_run_on_another(
    shared: Journal, gates: Gates, hub: EventHub, wire: str
) -> None:
    a, b, _ = shared.replicas
    key = gates.key()
    async with client(a, wire) as on_a, client(b, wire) as on_b:
        task_id = await create(on_a, "gate", {"key": key})
        await hub.wait("started", key)
        await on_b.cancel_task(task_id)
        await hub.wait("stopped", key)  # the body itself reports it was stopped
        task = obj(await on_a.get_task(task_id))
    assert task["status"] == "cancelled"
    assert not hub.seen("released", key)


async def test_a_question_asked_on_one_process_is_answered_on_another_modern(
    shared: Journal,
) -> None:
    a, b, c = shared.replicas
    async with (
        client(a, MODERN, capabilities=ELICIT) as on_a,
        client(b, MODERN, capabilities=ELICIT) as on_b,
        client(c, MODERN, capabilities=ELICIT) as on_c,
    ):
        task_id = await create(
            on_a, "ask", {"question": "Which way?", "choices": ["left", "right"]}
        )
        waiting = await poll_until(on_b, task_id, {"input_required"})
        (key,) = obj(waiting["inputRequests"]).keys()
        answer = {"action": "accept", "content": {"answer": "left"}}
        await on_b.update_task(task_id, {key: answer})
        done = await poll_until(on_c, task_id, {"completed"})
    assert result_text(on_c, done) == "left"


async def test_a_question_asked_on_one_process_is_pushed_to_a_session_on_another(
    shared: Journal,
) -> None:
    a, b, c = shared.replicas
    asked_on_b: list[JSONObject] = []

    async def answer_on_b(method: str, params: JSONObject) -> JSONObject:
        asked_on_b.append(params)
        return {"action": "accept", "content": {"answer": "right"}}

    async def never(method: str, params: JSONObject) -> JSONObject:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with (
        client(b, LEGACY, capabilities=ELICIT, on_request=answer_on_b),
        client(a, LEGACY, capabilities=ELICIT, on_request=never) as on_a,
        client(c, LEGACY) as on_c,
    ):
        task_id = await create(
            on_a, "ask", {"question": "Which way?", "choices": ["left", "right"]}
        )
        done = await poll_until(on_c, task_id, {"completed"})
        with anyio.fail_after(TIMEOUT):
            payload = await on_c.task_result(task_id)
    assert done["status"] == "completed"
    assert text_of(payload) == "right"
    assert [p["message"] for p in asked_on_b] == ["Which way?"]


async def test_a_killed_process_s_task_is_finished_by_another(
    fresh: Journal, gates: Gates, hub: EventHub
) -> None:
    first = fresh.replica("first")
    await anyio.to_thread.run_sync(first.start)
    key = gates.key()
    async with client(first, LEGACY) as on_first:
        task_id = await create(on_first, "gate", {"key": key})
        await hub.wait("started", key, attempt=1)
    second = fresh.replica("second")
    await anyio.to_thread.run_sync(second.start)
    await anyio.to_thread.run_sync(first.kill)
    # The second process sees the first one's pid is gone: it recovers the
    # task at its next heartbeat, well before the lease would run out.
    await hub.wait("started", key, attempt=2)
    gates.release(key)
    async with client(second, LEGACY) as on_second:
        done = await poll_until(on_second, task_id, {"completed"})
        with anyio.fail_after(TIMEOUT):
            payload = await on_second.task_result(task_id)
    assert done["status"] == "completed"
    assert text_of(payload) == f"released {key}"
    assert "is gone" in second.log_text()


async def test_a_paused_process_loses_its_task_after_its_lease_and_is_fenced(
    fresh: Journal, gates: Gates, hub: EventHub
) -> None:
    first = fresh.replica("first")
    await anyio.to_thread.run_sync(first.start)
    key = gates.key()
    async with client(first, LEGACY) as on_first:
        task_id = await create(on_first, "gate", {"key": key})
        await hub.wait("started", key, attempt=1)
    second = fresh.replica("second")
    await anyio.to_thread.run_sync(second.start)
    os.kill(first.pid, signal.SIGSTOP)  # alive, holding its lease, doing nothing
    try:
        # Nobody renews the first process's lease: once it runs out, the
        # second process takes the task over and runs it again.
        with anyio.fail_after(LEASE_SECONDS * 5 + TIMEOUT):
            await hub.wait("started", key, attempt=2)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    gates.release(key)  # both runs may now return; only the second may record
    async with client(second, LEGACY) as on_second:
        done = await poll_until(on_second, task_id, {"completed"})
    assert done["status"] == "completed"
    assert re.search(r"the lease of \S+ ran out", second.log_text())
    await anyio.to_thread.run_sync(first.stop)
    assert re.search(
        rf"task {task_id}: (lease of attempt 1 is no longer|outcome of attempt 1 refused)",
        first.log_text(),
    ), first.log_text()


async def test_a_clients_cap_of_one_holds_across_processes(
    shared: Journal, gates: Gates, hub: EventHub
) -> None:
    intervals = shared.root / "intervals.txt"
    intervals.unlink(missing_ok=True)
    keys = [gates.key() for _ in range(6)]
    task_ids: list[str] = []
    async with (
        client(shared.replicas[0], LEGACY, token=CAPPED) as on_a,
        client(shared.replicas[1], LEGACY, token=CAPPED) as on_b,
        client(shared.replicas[2], LEGACY, token=CAPPED) as on_c,
    ):
        replicas = [on_a, on_b, on_c]
        for n, key in enumerate(keys):
            task_ids.append(await create(replicas[n % 3], "timed", {"key": key}))
        await hub.wait("started", keys[0])
        for key in keys:
            gates.release(key)
        for task_id in task_ids:
            await poll_until(on_a, task_id, {"completed"})
    runs: dict[str, list[int]] = {}
    for line in intervals.read_text().splitlines():
        _kind, task_id, _, at = line.split()
        runs.setdefault(task_id, []).append(int(at))
    spans = sorted((s, e) for s, e in runs.values())
    assert len(spans) == 6
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"two tasks of a client capped at 1 overlapped: {spans}"


async def test_a_symlinked_path_to_the_journal_is_the_same_journal(
    shared: Journal, tmp_path: Path
) -> None:
    link = tmp_path / "link.db"
    link.symlink_to(shared.db)
    linked = shared.replica("linked", db=link)
    await anyio.to_thread.run_sync(linked.start)
    async with (
        client(linked, LEGACY) as via_link,
        client(shared.replicas[0], LEGACY) as plain,
    ):
        task_id = await create(via_link, "echo", {"text": "same"})
        done = await poll_until(plain, task_id, {"completed"})
        listed = objects(obj(await plain.list_tasks())["tasks"])
    assert done["status"] == "completed"
    assert task_id in {t["taskId"] for t in listed}
    await anyio.to_thread.run_sync(linked.stop)
