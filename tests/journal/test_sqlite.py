"""What only the SQLite journal has: group commit, the schema and its upgrades, the file."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks._budgets import IDLE_BUCKET_SECONDS, BudgetLimits
from mcp_tasks._exceptions import JournalError, JournalSchemaError
from mcp_tasks._model import Outcome, OwnerId, TaskId, TaskStatus
from mcp_tasks.journal import ChangeKind, NewTask, open_journal
from mcp_tasks.journal._sql import migrations
from mcp_tasks.journal.sqlite import SqliteJournal
from mcp_tasks.journal.sqlite._rows import LARGE_JSON_CHARS
from mcp_tasks.journal.sqlite._schema import PACKAGE, WAL_SIZE_LIMIT_BYTES, statements

from ..quiesce import settle_tasks
from .contract.support import (
    ALICE,
    BOB,
    HOLDER,
    LEASE,
    T0,
    complete,
    new_task,
    submit_and_claim,
)

LATEST = migrations(PACKAGE)[-1][0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
async def sqlite_journal(db_path: Path) -> AsyncIterator[SqliteJournal]:
    async with SqliteJournal.open(db_path) as opened:
        yield opened


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        ((version,),) = db.execute("PRAGMA user_version").fetchall()
    return int(version)


def set_user_version(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version={version}")


def duplicate_of(new: NewTask, owner: OwnerId) -> NewTask:
    return dataclasses.replace(new_task(owner), task_id=new.task_id)


# --------------------------------------------------------------- group commit


async def test_concurrent_submits_share_commits(sqlite_journal: SqliteJournal) -> None:
    writer = sqlite_journal.writer
    batches, writes = writer.batches, writer.writes
    tasks = [new_task(OwnerId(f"client-{n % 7}")) for n in range(200)]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for new in tasks:
                tg.start_soon(sqlite_journal.submit, new)
    assert writer.writes - writes == 200
    assert writer.batches - batches <= 20
    for new in tasks:
        assert await sqlite_journal.get(new.task_id) is not None


async def test_a_failing_write_fails_alone_in_its_batch(
    sqlite_journal: SqliteJournal,
) -> None:
    writer = sqlite_journal.writer
    batches = writer.batches
    before = [new_task() for _ in range(20)]
    after = [new_task() for _ in range(20)]
    failures: list[BaseException] = []

    def bad(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ('probe', 'x')")
        db.execute("INSERT INTO no_such_table VALUES (1)")

    async def run_bad() -> None:
        try:
            await writer.write(bad)
        except JournalError as exc:
            failures.append(exc)

    # Everything is queued before the writer wakes (asyncio runs the started
    # tasks in order first), so all 41 writes land in one batch.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for new in before:
                tg.start_soon(sqlite_journal.submit, new)
            tg.start_soon(run_bad)
            for new in after:
                tg.start_soon(sqlite_journal.submit, new)
    assert writer.batches - batches == 1
    assert len(failures) == 1
    assert isinstance(failures[0].__cause__, sqlite3.OperationalError)
    for new in before + after:
        assert await sqlite_journal.get(new.task_id) is not None

    def probe(db: sqlite3.Connection) -> list[Any]:
        return db.execute("SELECT value FROM meta WHERE key = 'probe'").fetchall()

    rows: list[Any] = await writer.write(probe)
    assert rows == []  # the failed write's own changes were rolled back


async def test_a_duplicate_task_id_fails_alone(sqlite_journal: SqliteJournal) -> None:
    first, neighbour = new_task(), new_task(BOB)
    await sqlite_journal.submit(first)
    duplicate = duplicate_of(first, BOB)
    outcomes: dict[str, BaseException | None] = {}

    async def submit(name: str, new: NewTask) -> None:
        try:
            await sqlite_journal.submit(new)
        except JournalError as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = None

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, "duplicate", duplicate)
        tg.start_soon(submit, "neighbour", neighbour)
    assert isinstance(outcomes["duplicate"], JournalError)
    assert outcomes["neighbour"] is None
    got = await sqlite_journal.get(first.task_id)
    assert got is not None
    assert got.owner_id == ALICE
    (bob,) = await sqlite_journal.load(BOB)
    assert bob.queued == 1  # the refused duplicate left no count behind


async def test_settled_hears_each_insert_outcome_even_without_its_caller(
    sqlite_journal: SqliteJournal,
) -> None:
    first = new_task()
    await sqlite_journal.submit(first)
    duplicate, fresh = duplicate_of(first, BOB), new_task(BOB)
    heard: dict[str, BaseException | None] = {}
    writer_busy, release_writer = threading.Event(), threading.Event()

    def hear(name: str) -> Callable[[BaseException | None], None]:
        def settled(error: BaseException | None) -> None:
            heard[name] = error

        return settled

    def hold_the_writer(db: sqlite3.Connection) -> None:
        writer_busy.set()
        release_writer.wait(10)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sqlite_journal.writer.write, hold_the_writer)
            await anyio.to_thread.run_sync(writer_busy.wait, 10)
            async with anyio.create_task_group() as callers:
                callers.start_soon(sqlite_journal.submit, duplicate, hear("duplicate"))
                callers.start_soon(sqlite_journal.submit, fresh, hear("fresh"))
                await settle_tasks()
                callers.cancel_scope.cancel()  # both leave before their commit
            assert heard == {}
            release_writer.set()
        # Writes are FIFO: once this one returns, the batch before it settled.
        await sqlite_journal.writer.write(lambda db: None)
    assert set(heard) == {"duplicate", "fresh"}
    assert isinstance(heard["duplicate"], JournalError)
    assert heard["fresh"] is None
    assert await sqlite_journal.get(fresh.task_id) is not None


async def test_writes_queued_without_waiting_commit_in_order(
    sqlite_journal: SqliteJournal,
) -> None:
    order: list[int] = []
    for n in range(5):
        sqlite_journal.writer.write_nowait(
            lambda db, n=n: None, lambda result, error, n=n: order.append(n)
        )
    await sqlite_journal.writer.write(lambda db: None)
    assert order == [0, 1, 2, 3, 4]


def _turn_is_free(sidecar: Path) -> bool:
    """Whether another open of the turnstile could take it right now."""
    fd = os.open(sidecar, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


async def test_writers_hold_the_turnstile_while_they_commit_and_only_then(
    tmp_path: Path, db_path: Path
) -> None:
    link = tmp_path / "link.db"
    async with SqliteJournal.open(db_path):
        pass
    os.symlink(db_path, link)
    sidecar = db_path.with_name(db_path.name + "-turn")
    async with SqliteJournal.open(link) as through_link:
        assert sidecar.exists()  # the real path's sidecar, not the link's
        assert not (tmp_path / "link.db-turn").exists()
        assert _turn_is_free(sidecar)
        held = await through_link.writer.write(lambda db: not _turn_is_free(sidecar))
        assert held
        assert _turn_is_free(sidecar)


async def test_a_python_error_in_a_write_reaches_its_caller_unchanged(
    sqlite_journal: SqliteJournal,
) -> None:
    def broken(db: sqlite3.Connection) -> None:
        raise LookupError("not a database problem")

    with pytest.raises(LookupError, match="not a database problem"):
        await sqlite_journal.writer.write(broken)


async def test_writes_and_reads_after_closing_are_refused(db_path: Path) -> None:
    async with SqliteJournal.open(db_path) as opened:
        pass
    heard: list[BaseException | None] = []
    with pytest.raises(JournalError, match="closed"):
        await opened.submit(new_task(), heard.append)
    assert len(heard) == 1
    assert isinstance(heard[0], JournalError)
    with pytest.raises(JournalError):
        await opened.get(TaskId("any"))


# ------------------------------------------------------------- quick reads


class _BusyConnection:
    """Stands in for the quick reader when another process holds a lock.

    In WAL mode readers meet SQLITE_BUSY only during another process's
    recovery of the WAL index, which a test cannot stage reliably.
    """

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls = 0

    def execute(self, sql: str, params: object) -> Any:
        self.calls += 1
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = self.code
        raise error


async def test_a_read_that_would_wait_on_a_lock_is_done_on_the_reader_thread(
    sqlite_journal: SqliteJournal,
) -> None:
    claimed = await submit_and_claim(sqlite_journal)
    quick = await sqlite_journal.get(claimed.task_id)
    busy = _BusyConnection(sqlite3.SQLITE_BUSY)
    sqlite_journal._quick = busy  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage]
    assert await sqlite_journal.get(claimed.task_id) == quick
    assert busy.calls == 1


async def test_a_large_outcome_is_read_whole(sqlite_journal: SqliteJournal) -> None:
    """An outcome over the quick read's limit is read (and parsed) off the loop."""
    claimed = await submit_and_claim(sqlite_journal)
    text = "x" * (LARGE_JSON_CHARS + 10)
    big = Outcome(result={"content": [{"type": "text", "text": text}]})
    await sqlite_journal.finish(
        claimed.lease, TaskStatus.COMPLETED, "test", T0 + 1, outcome=big
    )
    read = await sqlite_journal.get(claimed.task_id, outcome=True)
    assert read is not None
    assert read.outcome == big


async def test_a_quick_read_that_fails_otherwise_is_a_journal_error(
    sqlite_journal: SqliteJournal,
) -> None:
    claimed = await submit_and_claim(sqlite_journal)
    sqlite_journal._quick = _BusyConnection(sqlite3.SQLITE_IOERR)  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage]
    with pytest.raises(JournalError, match="journal read failed"):
        await sqlite_journal.get(claimed.task_id)


async def test_quick_and_full_reads_see_the_same_task(
    sqlite_journal: SqliteJournal,
) -> None:
    """A running, a queued and a finished task read as the full read shows them."""
    claimed = await submit_and_claim(sqlite_journal)
    running = await sqlite_journal.get(claimed.task_id)
    queued_new = new_task(BOB)
    await sqlite_journal.submit(queued_new)
    queued = await sqlite_journal.get(queued_new.task_id)
    assert running is not None
    assert queued is not None
    assert running.status is TaskStatus.WORKING
    assert queued.queued_ahead == 0  # only the full read counts the queue
    await complete(sqlite_journal, claimed)
    finished = await sqlite_journal.get(claimed.task_id, outcome=True)
    bare = await sqlite_journal.get(claimed.task_id)
    assert finished is not None
    assert finished.outcome is not None
    assert bare is not None
    assert bare.outcome is None
    assert dataclasses.replace(finished, outcome=None) == bare
    assert finished.outcome == Outcome(result={"content": []})
    assert await sqlite_journal.get(TaskId("no-such-task")) is None


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(("setting", "code"), [("FULL", 2), ("NORMAL", 1)])
async def test_the_synchronous_setting_is_applied_to_the_writer(
    db_path: Path, setting: str, code: int
) -> None:
    def read(db: sqlite3.Connection) -> list[Any]:
        return db.execute("PRAGMA synchronous").fetchall()

    async with SqliteJournal.open(db_path, synchronous=setting) as opened:
        rows: list[Any] = await opened.writer.write(read)
    assert rows == [(code,)]


async def test_the_database_is_in_wal_mode_with_a_bounded_wal(db_path: Path) -> None:
    def read(db: sqlite3.Connection) -> list[Any]:
        return db.execute("PRAGMA journal_size_limit").fetchall()

    async with SqliteJournal.open(db_path) as opened:
        assert await opened.writer.write(read) == [(WAL_SIZE_LIMIT_BYTES,)]
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchall() == [("wal",)]


async def test_an_unknown_synchronous_setting_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        async with SqliteJournal.open(db_path, synchronous="OFF"):
            pass
    assert not await anyio.Path(db_path).exists()


async def test_a_journal_url_opens_the_same_file(db_path: Path) -> None:
    async with open_journal(f"sqlite://{db_path}") as by_url:
        new = new_task()
        await by_url.submit(new)
    async with open_journal(db_path) as by_path:
        assert await by_path.get(new.task_id) is not None


# --------------------------------------------------------- schema versions


async def test_a_fresh_database_is_at_the_latest_schema_version(db_path: Path) -> None:
    async with SqliteJournal.open(db_path):
        pass
    assert user_version(db_path) == LATEST


async def test_reopening_a_current_database_changes_no_version(db_path: Path) -> None:
    async with SqliteJournal.open(db_path) as opened:
        await opened.submit(new_task())
    async with SqliteJournal.open(db_path):
        pass
    assert user_version(db_path) == LATEST


async def test_processes_opening_a_fresh_database_at_once_migrate_it_once(
    db_path: Path,
) -> None:
    opened: list[int] = []

    async def open_one() -> None:
        async with SqliteJournal.open(db_path) as journal:
            await journal.submit(new_task())
            opened.append(1)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(open_one)
    assert len(opened) == 4
    assert user_version(db_path) == LATEST


async def test_a_version_two_database_is_upgraded_with_its_tasks(db_path: Path) -> None:
    """A journal written by the single-process release keeps every task."""
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        for version, script in migrations(PACKAGE)[:2]:
            for statement in statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={version}")
        rows = [
            ("t-queued", "alice", "queued", "working", None),
            ("t-running", "alice", "running", "working", None),
            ("t-waiting", "bob", "parked", "input_required", None),
            (
                "t-error",
                "bob",
                "done",
                "completed",
                '{"result":{"content":[{"type":"text","text":"nope"}],"isError":true}}',
            ),
        ]
        for task_id, owner, phase, status, outcome in rows:
            db.execute(
                "INSERT INTO tasks (task_id, owner_id, tool_name, arguments, status,"
                " created_at, updated_at, poll_interval_seconds, phase, outcome,"
                " lease_holder, lease_expires_at) VALUES (?, ?, 'echo', '{}', ?, ?, ?,"
                " 1.0, ?, ?, ?, ?)",
                (task_id, owner, status, T0, T0, phase, outcome,
                 "old/1/x" if phase == "running" else None,
                 T0 + 30 if phase == "running" else None),
            )  # fmt: skip
            db.execute(
                "INSERT INTO task_events (task_id, status, reason, at)"
                " VALUES (?, ?, 'submitted', ?)",
                (task_id, status, T0),
            )
    async with SqliteJournal.open(db_path) as journal:
        loads = {load.owner_id: load for load in await journal.load()}
        assert (loads[ALICE].queued, loads[ALICE].running) == (1, 1)
        assert loads[BOB].waiting == 1
        errored = await journal.get(TaskId("t-error"))
        assert errored is not None
        assert errored.tool_error == "nope"
        (event,) = await journal.events(TaskId("t-queued"))
        assert (event.kind, event.status) == (ChangeKind.STATUS, TaskStatus.WORKING)
        assert [h.lease.task_id for h in await journal.held_leases()] == ["t-running"]
        (claimed,) = await journal.claim(HOLDER, T0 + LEASE, 5, T0)
        assert claimed.task_id == "t-queued"
        before = await journal.feed_head()
        new = new_task()
        await journal.submit(new)
        assert int(await journal.feed_head()) > int(before) > 4  # after the history


async def test_a_database_from_a_newer_version_is_refused_untouched(
    db_path: Path,
) -> None:
    async with SqliteJournal.open(db_path) as opened:
        await opened.submit(new_task())
    set_user_version(db_path, 99)
    before = await anyio.Path(db_path).read_bytes()
    with pytest.raises(JournalSchemaError) as caught:
        async with SqliteJournal.open(db_path):
            pass
    assert (caught.value.found, caught.value.supported) == (99, LATEST)
    assert await anyio.Path(db_path).read_bytes() == before


async def test_a_foreign_database_with_a_higher_version_is_left_untouched(
    db_path: Path,
) -> None:
    # Another program's database (rollback journal, not WAL) opened by
    # mistake: refusing it must not convert it to WAL or write anything.
    with closing(sqlite3.connect(db_path)) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('keep me')")
        db.execute("PRAGMA user_version=99")
        db.commit()
    before = await anyio.Path(db_path).read_bytes()
    with pytest.raises(JournalSchemaError):
        async with SqliteJournal.open(db_path):
            pass
    assert await anyio.Path(db_path).read_bytes() == before


async def test_a_file_of_garbage_is_a_journal_error(db_path: Path) -> None:
    garbage = b"this is not a database\x00\xff" * 200
    await anyio.Path(db_path).write_bytes(garbage)
    with pytest.raises(JournalError) as caught:
        async with SqliteJournal.open(db_path):
            pass
    assert not isinstance(caught.value, JournalSchemaError)
    assert await anyio.Path(db_path).read_bytes() == garbage


async def test_a_path_in_a_missing_directory_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="does not exist"):
        async with SqliteJournal.open(tmp_path / "absent" / "journal.db"):
            pass


def test_statements_keep_trigger_bodies_whole() -> None:
    script = """
    -- a comment
    CREATE TABLE a (x);
    CREATE TRIGGER t AFTER INSERT ON a BEGIN
        UPDATE a SET x = 1; UPDATE a SET x = 2;
    END;
    -- trailing comment
    """
    found = statements(script)
    assert len(found) == 2
    assert found[1].startswith("CREATE TRIGGER")
    assert found[1].endswith("END;")


# ----------------------------------------------------------------- the file


async def test_a_symlinked_path_is_the_same_journal(
    tmp_path: Path, db_path: Path
) -> None:
    link = tmp_path / "link.db"
    os.symlink(db_path, link)
    async with SqliteJournal.open(db_path) as plain, SqliteJournal.open(link) as linked:
        new = new_task()
        await plain.submit(new)
        assert await linked.get(new.task_id) is not None
        (claimed,) = await linked.claim(HOLDER, T0 + LEASE, 1, T0)
        assert await plain.claim(HOLDER, T0 + LEASE, 1, T0) == []
        assert claimed.task_id == new.task_id


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_journal_file_deleted_or_replaced_in_use_refuses_writes(
    db_path: Path, how: str
) -> None:
    async with SqliteJournal.open(db_path) as journal:
        await journal.submit(new_task())
        await journal.check()
        for suffix in ("", "-wal", "-shm"):
            await anyio.Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            with closing(sqlite3.connect(db_path)) as db:
                db.execute("CREATE TABLE other (x)")
        with pytest.raises(JournalError, match=how):
            await journal.submit(new_task())
        with pytest.raises(JournalError, match=how):
            await journal.check()
        with pytest.raises(JournalError, match=how):
            await journal.claim(HOLDER, T0 + LEASE, 1, T0)


async def test_buckets_idle_for_an_hour_are_forgotten_by_the_sweep(
    sqlite_journal: SqliteJournal, db_path: Path
) -> None:
    # Clients' request buckets would otherwise pile up (a session is a client
    # without tokens); one idle for an hour is full, so nothing changes.
    limits = BudgetLimits(requests_per_minute=60, requests_burst=2)
    await sqlite_journal.take_budget("requests:old", limits, 1, 0, T0)
    await sqlite_journal.take_budget("requests:new", limits, 1, 0, T0 + 3000)
    await sqlite_journal.purge_expired(T0 + IDLE_BUCKET_SECONDS + 1, T0)
    with closing(sqlite3.connect(db_path)) as db:
        names = [row[0] for row in db.execute("SELECT name FROM budgets")]
    assert names == ["requests:new"]
