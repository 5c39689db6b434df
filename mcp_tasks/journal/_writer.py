"""Group commit: one writer coroutine batches concurrent writes into one commit.

SQLite allows one writer per database file, and with ``synchronous=FULL`` every
commit costs an fsync. Rather than one transaction per write, callers queue
their writes and wait; the writer takes everything waiting (up to `MAX_BATCH`),
runs it in one ``BEGIN IMMEDIATE … COMMIT`` and then wakes the callers. The
batch fills to the number of concurrent callers by itself, so no timer adds
latency to a lone write. Submits are coalesced further into a single
``executemany`` per table.

The writer owns a plain ``sqlite3`` connection and runs each whole batch in one
call on a thread of its own: one thread hop per batch, where a driver such as
aiosqlite costs one per statement. Write functions are therefore synchronous
and run on that thread; they must touch nothing but the connection they are
given.

If a batch fails, it is rolled back and each write is retried in its own
transaction, so one bad write fails alone and never takes its neighbours down.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from mcp_tasks._exceptions import JournalError
from mcp_tasks.journal._records import NewTask
from mcp_tasks.journal._sql import queries

MAX_BATCH = 256

#: The result of a write that has not committed (None is a valid result).
_UNSET: Any = object()

#: A write: runs on the writer's thread inside its transaction, returns a result.
WriteFn = Callable[[sqlite3.Connection], Any]

#: Told the outcome of an insert (None: committed) on the event loop, once.
Settled = Callable[[BaseException | None], None]

logger = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Write:
    """One queued write; its result or error is filled in by the commit."""

    fn: WriteFn | None = None
    new_task: NewTask | None = None
    settled: Settled | None = None
    result: Any = _UNSET
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class _Batch:
    """Writes that commit together, and the one event all their callers wait on."""

    writes: list[_Write] = field(default_factory=list[_Write])
    done: anyio.Event = field(default_factory=anyio.Event)


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
    """The single writer of one database file.

    ``connection`` must be opened with ``check_same_thread=False`` and
    ``isolation_level=None``; from then on only this writer may use it.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        # One token: batches never overlap, and the writer never competes with
        # tools for the default thread pool's tokens.
        self._thread = anyio.CapacityLimiter(1)
        self._open = _Batch()
        self._sealed: deque[_Batch] = deque()
        self._wake = anyio.Event()
        self._closed = False
        self.batches = 0
        self.writes = 0

    async def write(self, fn: WriteFn) -> Any:
        """Run ``fn(connection)`` inside a write transaction; return its result.

        The wait is shielded: once queued the write will commit, and a caller
        cancelled meanwhile still gets the result, to act on before its next
        checkpoint raises the cancellation.
        """
        write = _Write(fn=fn)
        batch = self._queue(write)
        with anyio.CancelScope(shield=True):
            await batch.done.wait()
        return _outcome(write)

    async def insert(self, task: NewTask, settled: Settled | None = None) -> None:
        """Insert a new task (and its first event) durably.

        ``settled`` hears the outcome on the event loop as soon as it is known,
        whether or not this caller is still waiting: the wait is not shielded
        (submits are the hot path, and a shield per caller cost about a tenth
        of engine throughput), so what must follow a commit belongs there.
        """
        write = _Write(new_task=task, settled=settled)
        batch = self._queue(write)
        await batch.done.wait()
        _outcome(write)

    def _queue(self, write: _Write) -> _Batch:
        if self._closed:
            write.error = JournalError("the journal is closed")
            _tell(write)
            raise write.error
        batch = self._open
        batch.writes.append(write)
        if len(batch.writes) >= MAX_BATCH:
            self._sealed.append(batch)
            self._open = _Batch()
        self._wake.set()
        return batch

    def close(self) -> None:
        """Stop accepting writes; queued ones still commit before `run` returns."""
        self._closed = True
        self._wake.set()

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit batches until `close` is called and everything queued is done."""
        task_status.started()
        try:
            while True:
                batch = self._take()
                if batch is None:
                    if self._closed:
                        return
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                self.batches += 1
                self.writes += len(batch.writes)
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(
                            self._commit, batch.writes, limiter=self._thread
                        )
                    finally:
                        _settle(batch)
        finally:
            self._refuse_queued()

    def _refuse_queued(self) -> None:
        """The writer stopped: fail whatever is still queued instead of hanging."""
        self._closed = True
        while (batch := self._take()) is not None:
            _settle(batch)

    def _take(self) -> _Batch | None:
        if self._sealed:
            return self._sealed.popleft()
        if not self._open.writes:
            return None
        batch, self._open = self._open, _Batch()
        return batch

    # The methods below run on the writer's thread.

    def _commit(self, writes: list[_Write]) -> None:
        try:
            results = self._transaction(writes)
        except Exception:
            self._rollback()
            for write in writes:
                self._commit_alone(write)
            return
        for write, result in zip(writes, results, strict=True):
            write.result = result

    def _commit_alone(self, write: _Write) -> None:
        try:
            (write.result,) = self._transaction([write])
        except Exception as exc:
            self._rollback()
            write.error = _wrap(exc)

    def _transaction(self, writes: list[_Write]) -> list[Any]:
        sql = queries()
        db = self._connection
        db.execute("BEGIN IMMEDIATE")
        inserts = [w.new_task for w in writes if w.new_task is not None]
        if inserts:
            db.executemany(sql["insert_task"], [_task_row(t) for t in inserts])
            db.executemany(sql["insert_event"], [_event_row(t) for t in inserts])
        results = [None if w.fn is None else w.fn(db) for w in writes]
        db.execute("COMMIT")
        return results

    def _rollback(self) -> None:
        try:
            self._connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open: BEGIN itself failed


def _settle(batch: _Batch) -> None:
    """Wake the batch's callers; a write left without an outcome gets an error."""
    for write in batch.writes:
        if write.result is _UNSET and write.error is None:
            write.error = JournalError("the journal writer stopped before this write")
        _tell(write)
    batch.done.set()


def _tell(write: _Write) -> None:
    if write.settled is None:
        return
    try:
        write.settled(write.error)
    except Exception:
        # A broken callback must not stop the writer or its neighbours' wake-up.
        logger.exception("journal: a settled callback failed")


def _outcome(write: _Write) -> Any:
    if write.error is not None:
        raise write.error
    return write.result


def _wrap(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        wrapped = JournalError(f"journal write failed: {exc}")
        wrapped.__cause__ = exc
        return wrapped
    return exc
