"""Group commit: one writer per process batches concurrent writes into one commit.

SQLite allows one writer per database file at a time, and with
``synchronous=FULL`` every commit costs an fsync. Rather than one transaction
per write, callers queue their writes; the writer takes everything waiting (up
to `MAX_BATCH`), runs it in one ``BEGIN IMMEDIATE … COMMIT`` and then tells the
callers. The batch fills to the number of concurrent callers by itself, so no
timer adds latency to a lone write. Other processes on the same file take
turns through SQLite's own lock (``BEGIN IMMEDIATE`` waits for it).

The writer owns a plain ``sqlite3`` connection and runs each whole batch in one
call on a thread of its own: one thread hop per batch, where a driver such as
aiosqlite costs one per statement. Write functions are therefore synchronous
and run on that thread; they must touch nothing but the connection they are
given.

If a batch fails, it is rolled back and each write is retried in its own
transaction, so one bad write fails alone and never takes its neighbours down.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus

from mcp_tasks._exceptions import JournalError
from mcp_tasks.journal._records import NewTask
from mcp_tasks.journal.sqlite._turnstile import Turnstile

MAX_BATCH: Final = 256

#: The result of a write that has not committed (None is a valid result).
_UNSET: Any = object()

#: A write: runs on the writer's thread inside its transaction, returns a result.
WriteFn = Callable[[sqlite3.Connection], Any]
#: Inserts new tasks inside the transaction; returns, per task, why it was
#: refused (an exception to give its caller) or None when it was inserted.
InsertBatch = Callable[[sqlite3.Connection, Sequence[NewTask]], list[Exception | None]]
#: Told the outcome of a write on the event loop, once: (result, error).
Done = Callable[[Any, BaseException | None], None]

logger = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Write:
    """One queued write; its result or error is filled in by the commit."""

    fn: WriteFn | None = None
    new_task: NewTask | None = None
    done: Done | None = None
    result: Any = _UNSET
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class _Batch:
    """Writes that commit together, and the one event all their callers wait on."""

    writes: list[_Write] = field(default_factory=list[_Write])
    done: anyio.Event = field(default_factory=anyio.Event)


class GroupCommitWriter:
    """The single writer of one process to one database file.

    ``connection`` must be opened with ``check_same_thread=False`` and
    ``isolation_level=None``; from then on only this writer may use it.
    ``before_batch`` runs on the writer's thread before each transaction and
    may raise `JournalError` to refuse the whole batch (the file is gone);
    ``after_commit(seconds, writes)`` runs on the event loop after each batch:
    how long it took (waiting for the file's write lock included) and how many
    writes it carried.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        insert_batch: InsertBatch,
        *,
        before_batch: Callable[[], None] | None = None,
        after_commit: Callable[[float, int], None] | None = None,
        turnstile: Turnstile | None = None,
    ) -> None:
        self._connection = connection
        self._turnstile = turnstile
        self._insert_batch = insert_batch
        self._before_batch = before_batch
        self._after_commit = after_commit
        # One token: batches never overlap, and the writer never competes with
        # tools for the default thread pool's tokens.
        self._thread = anyio.CapacityLimiter(1)
        self._open = _Batch()
        self._sealed: deque[_Batch] = deque()
        self._wake = anyio.Event()
        self._closed = False
        self.batches = 0
        self.writes = 0
        #: Seconds spent in each recent commit, for metrics (oldest dropped).
        self.commit_seconds: deque[float] = deque(maxlen=1024)

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

    def write_nowait(self, fn: WriteFn, done: Done | None = None) -> None:
        """Queue ``fn`` without waiting; ``done`` hears its outcome on the loop.

        Writes commit in the order they were queued, so a write queued after
        this one is never committed before it.
        """
        self._queue(_Write(fn=fn, done=done))

    async def insert(self, task: NewTask, done: Done | None = None) -> None:
        """Insert a new task (and its first change) durably.

        ``done`` hears the outcome on the event loop as soon as it is known,
        whether or not this caller is still waiting: the wait is not shielded
        (submits are the hot path, and a shield per caller cost about a tenth
        of engine throughput), so what must follow a commit belongs there.
        """
        write = _Write(new_task=task, done=done)
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
                started = time.perf_counter()
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(
                            self._commit, batch.writes, limiter=self._thread
                        )
                    finally:
                        _settle(batch)
                if self._after_commit is not None:
                    self._after_commit(time.perf_counter() - started, len(batch.writes))
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
        if self._before_batch is not None:
            try:
                self._before_batch()
            except JournalError as exc:
                for write in writes:
                    write.error = exc
                return
        if self._turnstile is not None:
            self._turnstile.enter()
        try:
            self._commit_in_turn(writes)
        finally:
            if self._turnstile is not None:
                self._turnstile.leave()

    def _commit_in_turn(self, writes: list[_Write]) -> None:
        started = time.perf_counter()
        try:
            outcomes = self._transaction(writes)
        except Exception:
            self._rollback()
            for write in writes:
                self._commit_alone(write)
            return
        self.commit_seconds.append(time.perf_counter() - started)
        for write, (result, error) in zip(writes, outcomes, strict=True):
            write.result, write.error = result, error

    def _commit_alone(self, write: _Write) -> None:
        try:
            ((write.result, write.error),) = self._transaction([write])
        except Exception as exc:
            self._rollback()
            write.error = _wrap(exc)

    def _transaction(
        self, writes: list[_Write]
    ) -> list[tuple[Any, BaseException | None]]:
        db = self._connection
        db.execute("BEGIN IMMEDIATE")
        inserts = [w.new_task for w in writes if w.new_task is not None]
        refusals = iter(self._insert_batch(db, inserts) if inserts else [])
        outcomes: list[tuple[Any, BaseException | None]] = []
        for write in writes:
            if write.new_task is not None:
                outcomes.append((None, next(refusals)))
            else:
                assert write.fn is not None
                outcomes.append((write.fn(db), None))
        db.execute("COMMIT")
        return outcomes

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
    if write.done is None:
        return
    try:
        write.done(None if write.result is _UNSET else write.result, write.error)
    except Exception:
        # A broken callback must not stop the writer or its neighbours' wake-up.
        logger.exception("journal: a write's done callback failed")


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
