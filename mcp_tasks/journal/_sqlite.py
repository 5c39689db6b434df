"""`SqliteJournal`: the embedded default journal.

One database file in WAL mode. Writes go through one `GroupCommitWriter`, which
owns a plain ``sqlite3`` connection and runs each batch on its own thread; reads
use a second connection through aiosqlite, which WAL lets proceed while the
writer commits. Driver errors are wrapped in `JournalError` here and in the
writer, nowhere else.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final, final

import aiosqlite
import anyio

from mcp_tasks._exceptions import JournalError, JournalSchemaError
from mcp_tasks._model import (
    Outcome,
    OwnerId,
    Task,
    TaskId,
    TaskStatus,
    from_epoch,
    sources_of,
)
from mcp_tasks.journal._records import (
    InputRequest,
    NewTask,
    RunRecord,
    TaskEvent,
    Transition,
    UnfinishedTask,
)
from mcp_tasks.journal._sql import migrations, queries
from mcp_tasks.journal._writer import GroupCommitWriter

#: A finished task stays readable at least this long after it finishes, even if
#: its requested retention (counted from creation) ran out while it was running.
TERMINAL_GRACE_SECONDS: Final = 60.0

_TERMINAL_SQL = """
UPDATE tasks SET status = ?, status_message = ?, updated_at = ?, phase = 'done',
       outcome = ?, lease_holder = NULL, lease_expires_at = NULL, not_before = NULL,
       ttl_seconds = CASE WHEN ttl_seconds IS NULL THEN NULL
                          ELSE MAX(ttl_seconds, ? - created_at) END,
       expires_at = CASE WHEN ttl_seconds IS NULL THEN NULL
                         ELSE created_at + MAX(ttl_seconds, ? - created_at) END
WHERE task_id = ? AND status IN (?, ?)
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, outcome, listed
"""

_ACTIVE_SQL = """
UPDATE tasks SET status = ?, status_message = ?, updated_at = ?,
       phase = COALESCE(?, phase), not_before = ?,
       lease_holder = CASE WHEN COALESCE(?, phase) = 'running' THEN lease_holder END,
       lease_expires_at = CASE WHEN COALESCE(?, phase) = 'running'
                               THEN lease_expires_at END
WHERE task_id = ? AND status IN (?, ?)
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, outcome, listed
"""


def _outcome_json(outcome: Outcome | None) -> str | None:
    if outcome is None:
        return None
    if outcome.error is not None:
        return json.dumps({"error": outcome.error}, separators=(",", ":"))
    if outcome.result is not None:
        return json.dumps({"result": outcome.result}, separators=(",", ":"))
    return None


def _task_from_row(row: Any) -> Task:
    (
        task_id,
        owner_id,
        tool,
        status,
        message,
        created,
        updated,
        ttl,
        poll,
        outcome,
        listed,
    ) = row
    parsed = None
    if outcome is not None:
        data = json.loads(outcome)
        parsed = Outcome(result=data.get("result"), error=data.get("error"))
    return Task(
        task_id=TaskId(task_id),
        owner_id=OwnerId(owner_id),
        tool_name=tool,
        status=TaskStatus(status),
        status_message=message,
        created_at=from_epoch(created),
        last_updated_at=from_epoch(updated),
        ttl_seconds=ttl,
        poll_interval_seconds=poll,
        outcome=parsed,
        listed=bool(listed),
    )


def _open_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    """The writer's connection, with the schema brought up to date (blocking)."""
    db = sqlite3.connect(
        path, isolation_level=None, timeout=30.0, check_same_thread=False
    )
    try:
        # Refuse a newer database before any PRAGMA below can rewrite its header.
        current = _check_version(db, path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db, current)
    except BaseException:
        db.close()
        raise
    return db


def _check_version(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of ``db``; refuse one newer than this code knows."""
    ((current,),) = db.execute("PRAGMA user_version").fetchall()
    supported = migrations()[-1][0]
    if current > supported:
        raise JournalSchemaError(str(path), current, supported)
    return int(current)


def _migrate(db: sqlite3.Connection, current: int) -> None:
    """Apply every migration newer than ``current`` (the file lock keeps others out)."""
    for version, script in migrations():
        if version <= current:
            continue
        # executescript commits implicitly; the whole migration and its version
        # bump run as one script so a crash leaves either all or none applied.
        db.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version};\nCOMMIT;"
        )


async def _open_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection; the writer has already checked and migrated."""
    db = await aiosqlite.connect(path, isolation_level=None, timeout=30.0)
    try:
        await db.execute("PRAGMA query_only=ON")
    except BaseException:
        await db.close()
        raise
    return db


def _unfinished_rows(rows: list[Any]) -> list[UnfinishedTask]:
    return [
        UnfinishedTask(
            task_id=TaskId(r[0]),
            owner_id=OwnerId(r[1]),
            phase=r[2],
            status=TaskStatus(r[3]),
            not_before=r[4],
            lease_expires_at=r[5],
            tool_name=r[6],
        )
        for r in rows
    ]


def _check_location(path: Path) -> None:
    """Refuse paths that cannot hold a database, before any driver thread starts."""
    if path.is_dir():
        raise JournalError(f"{path} is a folder, not a database file")
    if not path.parent.is_dir():
        raise JournalError(f"{path}: the folder {path.parent} does not exist")


@contextmanager
def _exclusive_lock(path: Path) -> Generator[None]:
    """Hold an exclusive lock beside the database for as long as it is open.

    One process owns a journal file: it is the single writer, and it may treat
    every ``running`` row it finds at start-up as orphaned by a dead process.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise JournalError(
            f"{path}: cannot create lock file {lock_path}: {exc.strerror}"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(
                f"{path} is in use by another mcp-tasks process (lock {lock_path})"
            ) from None
        yield
    finally:
        os.close(fd)


@final
class SqliteJournal:
    """The SQLite journal. Open it with `SqliteJournal.open`."""

    def __init__(
        self,
        path: Path,
        writer_db: sqlite3.Connection,
        reader_db: aiosqlite.Connection,
    ) -> None:
        self.path = path
        self._reader = reader_db
        self._writer = GroupCommitWriter(writer_db)
        self._sql = queries()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path | str, *, synchronous: str = "FULL"
    ) -> AsyncGenerator[SqliteJournal]:
        """Open (creating or migrating) the database at ``path``.

        Raises:
            JournalSchemaError: the database was written by a newer mcp-tasks.
            JournalError: the file is not a database, or cannot be opened or written.
        """
        path = Path(path)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        _check_location(path)
        with _exclusive_lock(path):
            async with cls._open_locked(path, synchronous) as journal:
                yield journal

    @classmethod
    @asynccontextmanager
    async def _open_locked(
        cls, path: Path, synchronous: str
    ) -> AsyncGenerator[SqliteJournal]:
        try:
            writer_db = await anyio.to_thread.run_sync(_open_writer, path, synchronous)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
        try:
            try:
                reader_db = await _open_reader(path)
            except sqlite3.Error as exc:
                raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
            try:
                journal = cls(path, writer_db, reader_db)
                async with anyio.create_task_group() as tg:
                    await tg.start(journal._writer.run)
                    try:
                        yield journal
                    finally:
                        journal._writer.close()
            finally:
                with anyio.CancelScope(
                    shield=True
                ):  # threads must not outlive the loop
                    await reader_db.close()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer_db.close)

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer (exposed for statistics and benchmarks)."""
        return self._writer

    async def _read(self, name: str, *params: Any) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(self._sql[name], params))
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc
        except ValueError as exc:  # aiosqlite: "Connection closed"
            raise JournalError("the journal is closed") from exc

    async def submit(
        self,
        task: NewTask,
        settled: Callable[[BaseException | None], None] | None = None,
    ) -> Task:
        await self._writer.insert(task, settled)
        created = from_epoch(task.created_at)
        return Task(
            task_id=task.task_id,
            owner_id=task.owner_id,
            tool_name=task.tool_name,
            status=TaskStatus.WORKING,
            status_message=task.status_message,
            created_at=created,
            last_updated_at=created,
            ttl_seconds=task.ttl_seconds,
            poll_interval_seconds=task.poll_interval_seconds,
            listed=task.listed,
        )

    async def get(self, task_id: TaskId) -> Task | None:
        rows = await self._read("get_task", task_id)
        return _task_from_row(rows[0]) if rows else None

    async def list_owned(
        self, owner_id: OwnerId, after_seq: int, limit: int
    ) -> list[tuple[int, Task]]:
        rows = await self._read("list_owned", owner_id, after_seq, limit)
        return [(row[0], _task_from_row(row[1:])) for row in rows]

    async def request_meta(self, task_id: TaskId) -> dict[str, Any]:
        rows = await self._read("request_meta_of", task_id)
        return json.loads(rows[0][0]) if rows else {}

    async def seq_of(self, owner_id: OwnerId, task_id: TaskId) -> int | None:
        rows = await self._read("task_seq", task_id, owner_id)
        return rows[0][0] if rows else None

    def _transition_fn(
        self, change: Transition
    ) -> Callable[[sqlite3.Connection], Task | None]:
        """A write function applying ``change`` as compare-and-set plus its event."""
        sources = sorted(sources_of(change.status))
        guard = (sources + sources)[:2]
        if change.status.is_terminal:
            sql = _TERMINAL_SQL
            keep_until = change.at + TERMINAL_GRACE_SECONDS
            params: tuple[Any, ...] = (
                change.status.value,
                change.status_message,
                change.at,
                _outcome_json(change.outcome),
                keep_until,
                keep_until,
                change.task_id,
                *guard,
            )
        else:
            sql = _ACTIVE_SQL
            params = (
                change.status.value,
                change.status_message,
                change.at,
                change.phase,
                change.not_before,
                change.phase,
                change.phase,
                change.task_id,
                *guard,
            )
        event = self._sql["insert_event"]
        event_row = (
            change.task_id,
            change.status.value,
            change.status_message,
            change.reason,
            change.at,
        )

        def apply(db: sqlite3.Connection) -> Task | None:
            rows = list(db.execute(sql, params))
            if not rows:
                return None
            db.execute(event, event_row)
            return _task_from_row(rows[0])

        return apply

    async def transition(self, change: Transition) -> Task | None:
        result: Task | None = await self._writer.write(self._transition_fn(change))
        return result

    async def claim(
        self, task_id: TaskId, holder: str, lease_expires_at: float
    ) -> RunRecord | None:
        claim_sql = self._sql["claim"]

        def apply(db: sqlite3.Connection) -> RunRecord | None:
            # One statement: the claim returns what the worker needs.
            rows = list(db.execute(claim_sql, (holder, lease_expires_at, task_id)))
            if not rows:
                return None
            ((tid, owner, tool, args, meta, attempts, retries),) = rows
            return RunRecord(
                task_id=TaskId(tid),
                owner_id=OwnerId(owner),
                tool_name=tool,
                arguments=json.loads(args),
                request_meta=json.loads(meta),
                attempts=attempts,
                retries=retries,
            )

        record: RunRecord | None = await self._writer.write(apply)
        return record

    async def requeue(
        self,
        task_id: TaskId,
        status_message: str | None,
        at: float,
        reason: str = "requeued",
    ) -> bool:
        sql = self._sql["requeue"]
        event = self._sql["insert_event"]

        def apply(db: sqlite3.Connection) -> bool:
            rows = list(db.execute(sql, (status_message, at, task_id)))
            if rows:
                db.execute(event, (task_id, "working", status_message, reason, at))
            return bool(rows)

        requeued: bool = await self._writer.write(apply)
        return requeued

    async def set_status_message(
        self, task_id: TaskId, message: str, at: float, reason: str | None = None
    ) -> None:
        sql = self._sql["set_status_message"]
        event = self._sql["insert_event"]

        def apply(db: sqlite3.Connection) -> None:
            db.execute(sql, (message, at, task_id))
            if reason is not None:
                db.execute(event, (task_id, "working", message, reason, at))

        await self._writer.write(apply)

    async def unfinished(self) -> list[UnfinishedTask]:
        return _unfinished_rows(await self._read("unfinished"))

    async def expired_leases(self, now: float) -> list[UnfinishedTask]:
        return _unfinished_rows(await self._read("expired_leases", now))

    async def events(self, task_id: TaskId) -> list[TaskEvent]:
        rows = await self._read("events_of", task_id)
        return [TaskEvent(TaskStatus(r[0]), r[1], r[2], r[3]) for r in rows]

    async def purge_expired(self, now: float) -> list[TaskId]:
        children = [
            self._sql[name]
            for name in (
                "purge_expired_events",
                "purge_expired_steps",
                "purge_expired_inputs",
            )
        ]
        tasks_sql = self._sql["purge_expired"]

        def apply(db: sqlite3.Connection) -> list[TaskId]:
            for sql in children:
                db.execute(sql, (now,))
            rows = db.execute(tasks_sql, (now,))
            return [TaskId(r[0]) for r in rows]

        purged: list[TaskId] = await self._writer.write(apply)
        return purged

    # ------------------------------------------------- steps and input requests

    async def steps(self, task_id: TaskId) -> dict[str, Any]:
        rows = await self._read("steps_of", task_id)
        return {key: json.loads(result) for key, result in rows}

    async def record_step(
        self, task_id: TaskId, key: str, result: Any, at: float
    ) -> None:
        sql = self._sql["record_step"]
        encoded = json.dumps(result, separators=(",", ":"))

        def apply(db: sqlite3.Connection) -> None:
            db.execute(sql, (task_id, key, encoded, at))

        await self._writer.write(apply)

    async def forget_steps(self, task_id: TaskId) -> None:
        sql = self._sql["forget_steps"]

        def apply(db: sqlite3.Connection) -> None:
            db.execute(sql, (task_id,))

        await self._writer.write(apply)

    async def ask(
        self,
        task_id: TaskId,
        requests: list[InputRequest],
        status_message: str,
        at: float,
    ) -> Task | None:
        change = Transition(
            task_id,
            TaskStatus.INPUT_REQUIRED,
            "input requested",
            at,
            status_message=status_message,
            phase="parked",
        )
        transition = self._transition_fn(change)
        add = self._sql["add_input_request"]
        rows = [
            (task_id, r.key, r.method, json.dumps(r.params), at, r.expires_at)
            for r in requests
        ]

        def apply(db: sqlite3.Connection) -> Task | None:
            task = transition(db)
            if task is not None:
                db.executemany(add, rows)
            return task

        result: Task | None = await self._writer.write(apply)
        return result

    async def input_requests(self, task_id: TaskId) -> list[InputRequest]:
        rows = await self._read("input_requests_of", task_id)
        return [
            InputRequest(
                key=key,
                method=method,
                params=json.loads(params),
                response=None if response is None else json.loads(response),
                expires_at=expires,
            )
            for key, method, params, response, expires in rows
        ]

    async def answer(
        self,
        task_id: TaskId,
        answers: dict[str, dict[str, Any]],
        at: float,
    ) -> tuple[list[str], Task | None]:
        answer_sql = self._sql["answer_input_request"]
        open_sql = self._sql["open_input_count"]
        resume = self._transition_fn(
            Transition(
                task_id,
                TaskStatus.WORKING,
                "input received",
                at,
                status_message="Input received; resuming",
                phase="queued",
            )
        )

        def apply(db: sqlite3.Connection) -> tuple[list[str], Task | None]:
            accepted: list[str] = []
            for key, response in answers.items():
                encoded = json.dumps(response, separators=(",", ":"))
                rows = list(db.execute(answer_sql, (encoded, at, task_id, key)))
                accepted.extend(r[0] for r in rows)
            ((still_open,),) = list(db.execute(open_sql, (task_id,)))
            resumed = resume(db) if accepted and still_open == 0 else None
            return accepted, resumed

        result: tuple[list[str], Task | None] = await self._writer.write(apply)
        return result

    async def park(
        self,
        task_id: TaskId,
        not_before: float | None,
        status_message: str,
        reason: str,
        at: float,
        *,
        retry: bool = False,
    ) -> bool:
        park_sql = self._sql["park"]
        event = self._sql["insert_event"]

        def apply(db: sqlite3.Connection) -> bool:
            rows = list(
                db.execute(
                    park_sql, (not_before, status_message, at, int(retry), task_id)
                )
            )
            if rows:
                db.execute(event, (task_id, "working", status_message, reason, at))
            return bool(rows)

        parked: bool = await self._writer.write(apply)
        return parked

    async def renew_leases(self, holder: str, lease_expires_at: float) -> None:
        sql = self._sql["renew_leases"]

        def apply(db: sqlite3.Connection) -> None:
            db.execute(sql, (lease_expires_at, holder))

        await self._writer.write(apply)

    async def awaiting_input(self, owner_id: OwnerId, limit: int) -> list[TaskId]:
        rows = await self._read("awaiting_input", owner_id, limit)
        return [TaskId(r[0]) for r in rows]

    async def open_input_deadlines(self) -> list[tuple[TaskId, str, float]]:
        rows = await self._read("due_input_timeouts")
        return [(TaskId(task_id), key, expires) for task_id, key, expires in rows]

    async def secret(self, name: str) -> bytes:
        get_sql = self._sql["get_meta"]
        put_sql = self._sql["put_meta"]
        key = f"secret:{name}"

        def apply(db: sqlite3.Connection) -> str:
            rows = list(db.execute(get_sql, (key,)))
            if rows:
                return str(rows[0][0])
            value = secrets.token_hex(32)
            db.execute(put_sql, (key, value))
            return value

        value: str = await self._writer.write(apply)
        return bytes.fromhex(value)
