"""The server process itself: SIGTERM and restart, and refusing bad start-ups.

SIGTERM while a task runs must end the process with exit code 0, and the task
must survive in the journal: after a restart on the same database it runs
again and completes. A journal that is not a database, or that a newer
version wrote, makes ``serve`` exit 3 without touching it; a bad config makes
it exit 2, naming the offending key.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from mcp_tasks.client import JSONObject, RpcError, TaskClient

from .conftest import ServerFilesFactory
from .support import (
    E2E_TOOLS,
    EXIT_WAIT,
    RELATED_TASK,
    TIMEOUT,
    EventHub,
    Gates,
    HttpServer,
    obj,
    start_task,
    text_of,
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Interrupted:
    """A server that got SIGTERM while a gated task ran (and what it left)."""

    server: HttpServer
    task: JSONObject
    key: str
    gates: Gates
    exit_code: int
    log: str


@pytest.fixture(scope="module")
async def interrupted(
    server_files: ServerFilesFactory, hub: EventHub
) -> AsyncGenerator[Interrupted]:
    """Run a gated task over HTTP, SIGTERM the server mid-run, wait for the exit.

    A client stays connected (its standalone GET stream open), as in real use.
    Shared by the tests below, so the scenario costs one server start-up.
    """
    gates = Gates(hub, "sigterm")
    key = gates.key()
    server = HttpServer(server_files("sigterm"))
    try:
        server.start()
        with anyio.fail_after(TIMEOUT):
            async with TaskClient.http(server.url) as client:
                task = await start_task(client, "gate", {"key": key})
                await hub.wait("started", key, attempt=1)
                server.signal(signal.SIGTERM)
                code = await anyio.to_thread.run_sync(server.wait)
        log = server.log_text()
        server.stop()
        yield Interrupted(server, task, key, gates, code, log)
    finally:
        gates.release_all()
        server.stop()


async def test_sigterm_while_a_task_runs_exits_0(
    interrupted: Interrupted, hub: EventHub
) -> None:
    assert interrupted.exit_code == 0, interrupted.log
    # The body was interrupted at shutdown (grace 0.2 s), not left running.
    await hub.wait("stopped", interrupted.key, attempt=1)


async def test_sigterm_shutdown_logs_no_errors(interrupted: Interrupted) -> None:
    """A clean shutdown logs no tracebacks (INFO level and up is logged)."""
    assert "Traceback" not in interrupted.log, interrupted.log
    assert "ERROR" not in interrupted.log, interrupted.log


async def test_task_interrupted_by_sigterm_completes_after_restart(
    interrupted: Interrupted, hub: EventHub
) -> None:
    server, key = interrupted.server, interrupted.key
    task_id = str(interrupted.task["taskId"])
    try:
        server.start()  # the same journal, on a new port
        with anyio.fail_after(TIMEOUT):
            async with TaskClient.http(server.url) as client:
                await hub.wait("started", key, attempt=2)
                assert (await client.get_task(task_id))["status"] == "working"
                interrupted.gates.release(key)
                result = await client.task_result(task_id)
                fetched = await client.get_task(task_id)
    finally:
        server.stop()
    assert text_of(result) == f"released {key}"
    assert obj(obj(result["_meta"])[RELATED_TASK])["taskId"] == task_id
    assert fetched["status"] == "completed"
    assert fetched["createdAt"] == interrupted.task["createdAt"]


# ----------------------------------------------------------- bad start-ups


@dataclass
class Launch:
    """One ``mcp-tasks serve`` run expected to refuse to start."""

    argv: list[str]
    process: subprocess.Popen[bytes]
    db: Path
    before: dict[str, bytes]

    def finish(self) -> tuple[int, str]:
        """Wait for the exit; return the exit code and stderr."""
        _, stderr = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, stderr.decode(errors="replace")


BAD_CONFIGS: dict[str, tuple[str, str]] = {
    # name: (config text, the key the message must name)
    "zero-workers": ("[limits]\nworkers = 0\n", "limits.workers"),
    "unknown-key": ('[journal]\nsynchronous = "FULL"\nmode = "fast"\n', "journal.mode"),
}
NEWER_SCHEMA = 99


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launch]]:
    """Start every bad start-up at once (each costs an interpreter start-up)."""
    root = tmp_path_factory.mktemp("startup")
    runs: dict[str, tuple[list[str], Path]] = {}

    def serve(name: str, db: Path, config: Path | None = None) -> None:
        argv = [sys.executable, "-m", "mcp_tasks", "serve", "--db", str(db)]
        argv += ["--tools", str(E2E_TOOLS)]
        if config is not None:
            argv += ["--config", str(config)]
        runs[name] = (argv, db)

    corrupt = root / "corrupt.db"
    corrupt.write_bytes(b"this is not an SQLite database\x00\xff" * 512)
    serve("corrupt", corrupt)

    newer = root / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("CREATE TABLE tasks (task_id TEXT PRIMARY KEY)")
        db.execute(f"PRAGMA user_version={NEWER_SCHEMA}")
    db.close()
    serve("newer", newer)

    for name, (text, _) in BAD_CONFIGS.items():
        config = root / f"{name}.toml"
        config.write_text(text)
        serve(name, root / f"{name}.db", config)

    started: dict[str, Launch] = {}
    try:
        for name, (argv, db) in runs.items():
            before = snapshot(db)
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=root,
            )
            started[name] = Launch(argv, process, db, before)
        yield started
    finally:
        for launch in started.values():
            if launch.process.returncode is None:  # a test did not finish it
                launch.process.kill()
                launch.process.communicate(timeout=EXIT_WAIT)


def snapshot(path: Path) -> dict[str, bytes]:
    """The bytes of ``path`` and of any SQLite side files beside it."""
    return {
        p.name: p.read_bytes()
        for p in path.parent.glob(path.name + "*")
        if not p.name.endswith(".lock")
    }


def test_corrupt_journal_exits_3_with_a_clear_message(
    launches: dict[str, Launch],
) -> None:
    launch = launches["corrupt"]
    code, stderr = launch.finish()
    assert code == 3, stderr
    assert str(launch.db) in stderr
    assert "not a database" in stderr
    assert "Traceback" not in stderr
    assert snapshot(launch.db) == launch.before


def test_newer_journal_exits_3_and_is_left_unchanged(
    launches: dict[str, Launch],
) -> None:
    launch = launches["newer"]
    assert set(launch.before) == {launch.db.name}
    code, stderr = launch.finish()
    assert code == 3, stderr
    assert f"schema version {NEWER_SCHEMA}" in stderr
    assert str(launch.db) in stderr
    assert "Traceback" not in stderr
    assert snapshot(launch.db) == launch.before
    with sqlite3.connect(launch.db) as db:
        ((version,),) = db.execute("PRAGMA user_version").fetchall()
    db.close()
    assert version == NEWER_SCHEMA


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_key(
    launches: dict[str, Launch], name: str
) -> None:
    launch = launches[name]
    code, stderr = launch.finish()
    assert code == 2, stderr
    assert BAD_CONFIGS[name][1] in stderr
    assert "Traceback" not in stderr
    assert not launch.db.exists(), "a bad config must not create the journal"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_journal_pulled_away_is_refused_clearly_not_written_into(
    server_files: ServerFilesFactory, how: str
) -> None:
    # Acknowledging a task into an unlinked file would lose it at the restart:
    # once the file at --db is not the one opened, every submit is refused
    # with a clear error, and the server says so once in its log.
    files = server_files(f"pulled-away-{how}")
    server = HttpServer(files)
    await anyio.to_thread.run_sync(server.start)
    try:
        async with TaskClient.http(server.url) as client:
            with anyio.fail_after(TIMEOUT):
                before = await start_task(client, "echo", {"text": "kept"})
                await client.task_result(str(before["taskId"]))  # it finished
                for suffix in ("", "-wal", "-shm"):
                    await anyio.Path(f"{files.db}{suffix}").unlink(missing_ok=True)
                if how == "replaced":
                    await anyio.Path(files.db).write_bytes(b"")
                refusals: list[RpcError] = []
                for _ in range(5):
                    with pytest.raises(RpcError) as refused:
                        await start_task(client, "echo", {"text": "lost"})
                    refusals.append(refused.value)
        assert before["status"] == "working"
        assert {(e.code, e.message) for e in refusals} == {
            (-32603, "Internal error: the task journal is unavailable")
        }
    finally:
        await anyio.to_thread.run_sync(server.stop)
    log = files.log.read_text()
    # Said once where it was found, and once by each part that met it: not
    # once per refused request.
    assert (
        log.count(f"ERROR mcp_tasks.journal: {files.db}: the journal file was {how}")
        == 1
    )
    assert log.count(f"the journal file was {how}") <= 3
