"""`SqliteJournal`: the embedded default journal, on aiosqlite.

One database file in WAL mode. Writes go through one `GroupCommitWriter`
connection; reads use a second connection, which WAL lets proceed while the
writer commits. Driver errors are wrapped in `JournalError` here and nowhere
else.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
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
          updated_at, ttl_seconds, poll_interval_seconds, outcome
"""

_ACTIVE_SQL = """
UPDATE tasks SET status = ?, status_message = ?, updated_at = ?,
       phase = COALESCE(?, phase), not_before = ?,
       lease_holder = CASE WHEN COALESCE(?, phase) = 'running' THEN lease_holder END,
       lease_expires_at = CASE WHEN COALESCE(?, phase) = 'running'
                               THEN lease_expires_at END
WHERE task_id = ? AND status IN (?, ?)
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, outcome
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
    (task_id, owner_id, tool, status, message, created, updated, ttl, poll, outcome) = (
        row
    )
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
    )


async def _connect(path: Path, synchronous: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None, timeout=30.0)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous}")
        await db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        await db.close()
        raise
    return db


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    available = migrations()
    supported = available[-1][0]
    ((current,),) = await db.execute_fetchall("PRAGMA user_version")
    if current > supported:
        raise JournalSchemaError(str(path), current, supported)
    for version, script in available:
        if version <= current:
            continue
        # executescript commits implicitly; the whole migration and its version
        # bump run as one script so a crash leaves either all or none applied.
        await db.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version};\nCOMMIT;"
        )


@final
class SqliteJournal:
    """The SQLite journal. Open it with `SqliteJournal.open`."""

    def __init__(
        self,
        path: Path,
        writer_db: aiosqlite.Connection,
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
        try:
            writer_db = await _connect(path, synchronous)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
        try:
            try:
                await _migrate(writer_db, path)
                reader_db = await _connect(path, synchronous)
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
                await reader_db.close()
        finally:
            await writer_db.close()

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer (exposed for statistics and benchmarks)."""
        return self._writer

    async def _read(self, name: str, *params: Any) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(self._sql[name], params))
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc

    async def submit(self, task: NewTask) -> Task:
        await self._writer.insert(task)
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
        )

    async def get(self, task_id: TaskId) -> Task | None:
        rows = await self._read("get_task", task_id)
        return _task_from_row(rows[0]) if rows else None

    async def list_owned(
        self, owner_id: OwnerId, after_seq: int, limit: int
    ) -> list[tuple[int, Task]]:
        rows = await self._read("list_owned", owner_id, after_seq, limit)
        return [(row[0], _task_from_row(row[1:])) for row in rows]

    async def seq_of(self, owner_id: OwnerId, task_id: TaskId) -> int | None:
        rows = await self._read("task_seq", task_id, owner_id)
        return rows[0][0] if rows else None

    async def transition(self, change: Transition) -> Task | None:
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

        async def apply(db: aiosqlite.Connection) -> Task | None:
            rows = list(await db.execute_fetchall(sql, params))
            if not rows:
                return None
            await db.execute(
                event,
                (
                    change.task_id,
                    change.status.value,
                    change.status_message,
                    change.reason,
                    change.at,
                ),
            )
            return _task_from_row(rows[0])

        result: Task | None = await self._writer.write(apply)
        return result

    async def claim(
        self, task_id: TaskId, holder: str, lease_expires_at: float
    ) -> RunRecord | None:
        claim_sql = self._sql["claim"]
        run_sql = self._sql["get_run"]

        async def apply(db: aiosqlite.Connection) -> RunRecord | None:
            rows = list(
                await db.execute_fetchall(
                    claim_sql, (holder, lease_expires_at, task_id)
                )
            )
            if not rows:
                return None
            ((tid, owner, tool, args, meta, attempts, _phase, _status),) = list(
                await db.execute_fetchall(run_sql, (task_id,))
            )
            return RunRecord(
                task_id=TaskId(tid),
                owner_id=OwnerId(owner),
                tool_name=tool,
                arguments=json.loads(args),
                request_meta=json.loads(meta),
                attempts=attempts,
            )

        record: RunRecord | None = await self._writer.write(apply)
        return record

    async def requeue(
        self, task_id: TaskId, status_message: str | None, at: float
    ) -> None:
        sql = self._sql["requeue"]

        async def apply(db: aiosqlite.Connection) -> None:
            await db.execute(sql, (status_message, at, task_id))

        await self._writer.write(apply)

    async def set_status_message(
        self, task_id: TaskId, message: str, at: float
    ) -> None:
        sql = self._sql["set_status_message"]

        async def apply(db: aiosqlite.Connection) -> None:
            await db.execute(sql, (message, at, task_id))

        await self._writer.write(apply)

    async def unfinished(self) -> list[UnfinishedTask]:
        rows = await self._read("unfinished")
        return [
            UnfinishedTask(
                task_id=TaskId(r[0]),
                owner_id=OwnerId(r[1]),
                phase=r[2],
                status=TaskStatus(r[3]),
                not_before=r[4],
                lease_expires_at=r[5],
            )
            for r in rows
        ]

    async def events(self, task_id: TaskId) -> list[TaskEvent]:
        rows = await self._read("events_of", task_id)
        return [TaskEvent(TaskStatus(r[0]), r[1], r[2], r[3]) for r in rows]

    async def purge_expired(self, now: float) -> list[TaskId]:
        events_sql = self._sql["purge_expired_events"]
        tasks_sql = self._sql["purge_expired"]

        async def apply(db: aiosqlite.Connection) -> list[TaskId]:
            await db.execute(events_sql, (now,))
            rows = await db.execute_fetchall(tasks_sql, (now,))
            return [TaskId(r[0]) for r in rows]

        purged: list[TaskId] = await self._writer.write(apply)
        return purged

    async def secret(self, name: str) -> bytes:
        get_sql = self._sql["get_meta"]
        put_sql = self._sql["put_meta"]
        key = f"secret:{name}"

        async def apply(db: aiosqlite.Connection) -> str:
            rows = list(await db.execute_fetchall(get_sql, (key,)))
            if rows:
                return str(rows[0][0])
            value = secrets.token_hex(32)
            await db.execute(put_sql, (key, value))
            return value

        value: str = await self._writer.write(apply)
        return bytes.fromhex(value)
