"""Group commit: one writer coroutine batches concurrent writes into one commit.

SQLite allows one writer per database file, and with ``synchronous=FULL`` every
commit costs an fsync. Rather than one transaction per write, callers enqueue
their writes and await them; the writer drains everything waiting (up to
`MAX_BATCH`), runs it in one ``BEGIN IMMEDIATE … COMMIT`` and then wakes each
caller. The batch fills to the number of concurrent callers by itself, so no
timer adds latency to a lone write. Submits are coalesced further into a single
``executemany`` per table.

If a batch fails, it is rolled back and each write is retried in its own
transaction, so one bad write fails alone and never takes its neighbours down.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mcp_tasks._exceptions import JournalError
from mcp_tasks.journal._records import NewTask
from mcp_tasks.journal._sql import queries

MAX_BATCH = 256

WriteFn = Callable[[aiosqlite.Connection], Awaitable[Any]]


@dataclass(eq=False)
class _Write:
    """One queued write and the slot its caller waits on."""

    fn: WriteFn | None = None
    new_task: NewTask | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.done.set()


def _task_row(task: NewTask) -> tuple[Any, ...]:
    expires = None if task.ttl_seconds is None else task.created_at + task.ttl_seconds
    return (
        task.task_id,
        task.owner_id,
        task.tool_name,
        json.dumps(task.arguments, separators=(",", ":")),
        task.status_message,
        task.created_at,
        task.created_at,
        task.ttl_seconds,
        expires,
        task.poll_interval_seconds,
        1 if task.listed else 0,
        json.dumps(task.request_meta, separators=(",", ":")),
    )


def _event_row(task: NewTask) -> tuple[Any, ...]:
    return (task.task_id, "working", task.status_message, "submitted", task.created_at)


class GroupCommitWriter:
    """The single writer of one database file."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        send, receive = anyio.create_memory_object_stream[_Write](math.inf)
        self._send: MemoryObjectSendStream[_Write] = send
        self._receive: MemoryObjectReceiveStream[_Write] = receive
        self.batches = 0
        self.writes = 0

    async def write(self, fn: WriteFn) -> Any:
        """Run ``fn(connection)`` inside a write transaction; return its result."""
        return await self._enqueue(_Write(fn=fn))

    async def insert(self, task: NewTask) -> None:
        """Insert a new task (and its first event) durably."""
        await self._enqueue(_Write(new_task=task))

    async def _enqueue(self, write: _Write) -> Any:
        try:
            self._send.send_nowait(write)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise JournalError("the journal is closed") from None
        # Shielded: once queued the write will commit, and the caller must not
        # be told otherwise by a cancellation racing the commit.
        with anyio.CancelScope(shield=True):
            await write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result

    def close(self) -> None:
        """Stop accepting writes; queued ones still commit before `run` returns."""
        self._send.close()

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit batches until `close` is called and the queue is drained."""
        task_status.started()
        async with self._receive:
            while True:
                try:
                    first = await self._receive.receive()
                except anyio.EndOfStream:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    await self._commit(batch)

    async def _commit(self, batch: list[_Write]) -> None:
        self.batches += 1
        self.writes += len(batch)
        try:
            results = await self._transaction(batch)
        except Exception:
            await self._rollback()
            if len(batch) == 1:
                await self._commit_alone(batch[0])
            else:
                for write in batch:
                    await self._commit_alone(write)
            return
        for write, result in zip(batch, results, strict=True):
            write.finish(result)

    async def _commit_alone(self, write: _Write) -> None:
        try:
            (result,) = await self._transaction([write])
        except Exception as exc:
            await self._rollback()
            write.finish(error=_wrap(exc))
        else:
            write.finish(result)

    async def _transaction(self, batch: list[_Write]) -> list[Any]:
        sql = queries()
        db = self._db
        await db.execute("BEGIN IMMEDIATE")
        inserts = [w.new_task for w in batch if w.new_task is not None]
        if inserts:
            await db.executemany(sql["insert_task"], [_task_row(t) for t in inserts])
            await db.executemany(sql["insert_event"], [_event_row(t) for t in inserts])
        results = [None if w.fn is None else await w.fn(db) for w in batch]
        await db.execute("COMMIT")
        return results

    async def _rollback(self) -> None:
        try:
            await self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open: BEGIN itself failed


def _wrap(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        wrapped = JournalError(f"journal write failed: {exc}")
        wrapped.__cause__ = exc
        return wrapped
    return exc
