"""`SqliteJournal`: the embedded default journal, shareable by processes on one machine.

One database file in WAL mode. Each process writes through one
`GroupCommitWriter` (a plain ``sqlite3`` connection, each batch on its own
thread) and reads through a second connection via aiosqlite, which WAL lets
proceed while any writer commits. Processes take turns writing through
SQLite's own lock (``BEGIN IMMEDIATE``); because SQLite serialises writers, a
claim that reads a client's running count and then claims under its cap is
exact with no further locking. Driver errors are wrapped in `JournalError`
here and in the writer, nowhere else.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, final

import aiosqlite
import anyio

from mcp_tasks import _budgets
from mcp_tasks._budgets import IDLE_BUCKET_SECONDS, Bucket, BudgetLimits
from mcp_tasks._exceptions import CapacityError, JournalError
from mcp_tasks._model import InputRequest, Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks.journal._base import TERMINAL_GRACE_SECONDS, Settled
from mcp_tasks.journal._records import (
    BY,
    BY_SERVER,
    ChangeKind,
    Claimed,
    ClientLoad,
    FeedPage,
    HeldLease,
    Lease,
    NewTask,
    Recovery,
    Report,
    Resealed,
    TaskEvent,
    TaskRow,
)
from mcp_tasks.journal._sealing import (
    CHANGE_PLACES,
    DATA,
    INPUT_PLACES,
    MESSAGE,
    NO_SEALING,
    STEP_PLACES,
    TASK_PLACES,
    Sealing,
    check_keys,
    key_prefix,
    require_keyring,
    resealed_row,
)
from mcp_tasks.journal._sql import queries
from mcp_tasks.journal.sqlite import _rows
from mcp_tasks.journal.sqlite._schema import (
    BUSY_TIMEOUT_SECONDS,
    PACKAGE,
    FileIdentity,
    check_location,
    open_writer,
)
from mcp_tasks.journal.sqlite._turnstile import Turnstile
from mcp_tasks.journal.sqlite._writer import GroupCommitWriter

logger = logging.getLogger("mcp_tasks.journal")

_SQL = queries(PACKAGE)
#: ``before_seq`` when none is given: past any position SQLite can assign.
_NO_SEQ_LIMIT = 2**63 - 1


def _change(
    db: sqlite3.Connection,
    sealing: Sealing,
    task_id: str,
    owner: str,
    kind: ChangeKind,
    status: TaskStatus | str,
    message: str | None,
    reason: str,
    at: float,
    data: Mapping[str, Any] | None = None,
) -> None:
    """Record a change; ``message`` as stored (sealed already), ``data`` sealed here."""
    db.execute(
        _SQL["insert_change"],
        (
            task_id,
            owner,
            kind.value,
            str(status),
            message,
            reason,
            at,
            None if data is None else sealing.seal(_rows.dumps(data), DATA, task_id),
        ),
    )


def _fence(lease: Lease) -> tuple[str, str, int]:
    return (lease.task_id, lease.holder, lease.attempt)


def _insert_batch(
    db: sqlite3.Connection, tasks: Sequence[NewTask], sealing: Sealing = NO_SEALING
) -> list[Exception | None]:
    """Insert new tasks, each only if its client's backlog has room."""
    room: dict[str, int] = {}
    refusals: list[Exception | None] = []
    rows: list[tuple[Any, ...]] = []
    changes: list[tuple[Any, ...]] = []
    for task in tasks:
        owner = task.owner_id
        if owner not in room:
            ((unfinished,),) = db.execute(
                _SQL["upsert_client"], (owner, task.concurrency, task.backlog)
            ).fetchall()
            room[owner] = task.backlog - unfinished
        if room[owner] <= 0:
            refusals.append(CapacityError(owner, task.backlog))
            continue
        room[owner] -= 1
        rows.append(_rows.new_task_row(task, sealing))
        changes.append(_rows.new_task_change(task, sealing))
        refusals.append(None)
    db.executemany(_SQL["insert_task"], rows)
    db.executemany(_SQL["insert_change"], changes)
    return refusals


def _retention_params(at: float) -> tuple[float, float]:
    keep_until = at + TERMINAL_GRACE_SECONDS
    return keep_until, keep_until


def _open_quick_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection for `SqliteJournal._read_now` (never waits on locks)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        db.execute("PRAGMA query_only=ON")
    except BaseException:
        db.close()
        raise
    return db


async def _open_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection; the writer has already checked and migrated."""
    db = await aiosqlite.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS
    )
    try:
        await db.execute("PRAGMA query_only=ON")
    except BaseException:
        await db.close()
        raise
    return db


@final
class SqliteJournal:
    """The SQLite journal. Open it with `SqliteJournal.open`."""

    def __init__(
        self,
        path: Path,
        writer_db: sqlite3.Connection,
        reader_db: aiosqlite.Connection,
        identity: FileIdentity | None,
        turnstile: Turnstile | None,
        sealing: Sealing = NO_SEALING,
        quick_db: sqlite3.Connection | None = None,
    ) -> None:
        self.path = path
        self._sealing = sealing
        self._reader = reader_db
        self._quick = quick_db
        self._identity = identity
        self._broken: JournalError | None = None
        self._committed: list[Callable[[], None]] = []
        self._commit_observers: list[Callable[[float, int], None]] = []
        self._writer = GroupCommitWriter(
            writer_db,
            lambda db, tasks: _insert_batch(db, tasks, sealing),
            before_batch=self._check_file,
            after_commit=self._tell_committed,
            turnstile=turnstile,
        )

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        sealing: Sealing = NO_SEALING,
    ) -> AsyncGenerator[SqliteJournal]:
        """Open (creating or migrating) the database at ``path``.

        Any number of processes may open the same file at once. With a
        keyring in ``sealing``, values are sealed (`mcp_tasks.journal._sealing`).

        Raises:
            JournalSchemaError: the database was written by a newer mcp-tasks.
            JournalError: the file is not a database, or cannot be opened or written.
            ConfigurationError: ``sealing`` cannot open this journal's values
                (a wrong or missing key), or it holds sealed values and
                ``sealing`` has no keyring.
        """
        path = Path(path)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        check_location(path)
        try:
            writer_db = await anyio.to_thread.run_sync(open_writer, path, synchronous)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
        turnstile = _turnstile_for(path)
        try:
            await anyio.to_thread.run_sync(_check_keys, writer_db, sealing, str(path))
            try:
                reader_db = await _open_reader(path)
            except sqlite3.Error as exc:
                raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
            quick_db: sqlite3.Connection | None = None
            try:
                quick_db = _open_quick_reader(path)
                journal = cls(
                    path,
                    writer_db,
                    reader_db,
                    FileIdentity.of(path),
                    turnstile,
                    sealing,
                    quick_db,
                )
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
                if quick_db is not None:
                    quick_db.close()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer_db.close)
            if turnstile is not None:
                turnstile.close()

    # ------------------------------------------------------------ plumbing

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer (exposed for statistics and benchmarks)."""
        return self._writer

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop after each commit of this process."""
        self._committed.append(callback)

    def observe_commits(self, observer: Callable[[float, int], None]) -> None:
        """Call ``observer(seconds, writes)`` after each batch this process commits."""
        self._commit_observers.append(observer)

    def _tell_committed(self, seconds: float, writes: int) -> None:
        for observer in self._commit_observers:
            observer(seconds, writes)
        for callback in self._committed:
            callback()

    def _check_file(self) -> None:
        """Refuse writes once the file at the path is not the one we opened.

        A journal deleted or replaced under a running server would otherwise
        go on acknowledging tasks into an unlinked file, lost at the restart.
        Runs on the writer's thread before every batch (one ``stat`` each).
        """
        if self._broken is not None:
            raise self._broken
        now = FileIdentity.of(self.path)
        if now is None or now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            self._broken = JournalError(
                f"{self.path}: the journal file was {what} while in use; "
                "refusing writes (restart the server on the right file)"
            )
            logger.error("%s", self._broken)
            raise self._broken

    def _message(self, text: str | None, task_id: str) -> str | None:
        """A status message as stored (sealed for its task)."""
        return self._sealing.seal_optional(text, MESSAGE, task_id)

    async def check(self) -> None:
        if self._broken is not None:
            raise self._broken
        if FileIdentity.of(self.path) != self._identity:
            await self._writer.write(lambda db: None)  # raises, and marks it broken

    async def _read(self, name: str, *params: Any) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(_SQL[name], params))
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc
        except ValueError as exc:  # aiosqlite: "Connection closed"
            raise JournalError("the journal is closed") from exc

    def _read_now(self, name: str, *params: Any) -> list[Any] | None:
        """Run a small read on the event loop; None if it would have to wait.

        A thread hop costs more than a primary-key lookup
        (`benchmarks/sqlite_thread_hop.py`), but the loop must never
        wait on SQLite's locks (a checkpoint, WAL recovery by another
        process): this connection has no busy timeout, and a read that meets
        a lock returns None for the caller to go through `_read` instead.
        """
        if self._quick is None:
            return None
        try:
            return self._quick.execute(_SQL[name], params).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            ):
                return None
            raise JournalError(f"journal read failed: {exc}") from exc
        except sqlite3.ProgrammingError as exc:  # "Cannot operate on a closed database"
            raise JournalError("the journal is closed") from exc
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc

    def _outcome_now(self, seq: int) -> str | None:
        """The outcome of row ``seq`` read on the loop, if small; else None.

        Its size comes from the record header (an incremental-blob handle),
        so a large result is never read here: it is parsed off the loop by
        the full read. None too if the read would wait, or the row is gone.
        """
        if self._quick is None:
            return None
        try:
            with self._quick.blobopen("tasks", "outcome", seq, readonly=True) as blob:
                if len(blob) > _rows.LARGE_JSON_CHARS:
                    return None
                return blob.read().decode()
        except (sqlite3.Error, UnicodeDecodeError):
            return None  # the full read decides (and reports what is wrong)

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self._writer.write(fn)

    # ---------------------------------------------------------- submit, read

    async def submit(self, task: NewTask, settled: Settled | None = None) -> Task:
        def done(result: Any, error: BaseException | None) -> None:
            if settled is not None:
                settled(error)

        await self._writer.insert(task, done)
        return _rows.submitted_task(task)

    async def get(self, task_id: TaskId, *, outcome: bool = False) -> Task | None:
        # Most reads are of a running or finished task (a client polling it):
        # one primary-key lookup, done on the loop. A queued task's place in
        # its queue (a count) and a stored outcome (up to 16 MB) are read on
        # the reader's thread, as is everything when the quick read would wait.
        place = ("tasks.outcome", task_id)
        quick = self._read_now("get_task_quick", task_id)
        if quick is not None:
            if not quick:
                return None
            row = quick[0]
            queued, has_outcome, seq = row[-3:]
            if not queued and not (outcome and has_outcome):
                return _rows.task_from_row(row, None, None, sealing=self._sealing)
            text = None if queued else self._outcome_now(seq)
            if text is not None:  # small: parsed here, as the full read would
                loaded = _rows.outcome_from(self._sealing.loads(text, *place))
                return _rows.task_from_row(row, loaded, None, sealing=self._sealing)
        rows = await self._read("get_task", int(outcome), task_id)
        if not rows:
            return None
        row = rows[0]
        text: str | None = row[_rows.TASK_COLUMNS]
        client_limit: int | None = row[_rows.TASK_COLUMNS + 1]
        loaded = None
        if text is not None:
            if len(text) > _rows.LARGE_JSON_CHARS:
                # Parsing a very large result would stall every other client.
                data = await anyio.to_thread.run_sync(
                    lambda: self._sealing.loads(text, *place)
                )
            else:
                data = self._sealing.loads(text, *place)
            loaded = _rows.outcome_from(data)
        return _rows.task_from_row(row, loaded, client_limit, sealing=self._sealing)

    async def list_owned(
        self, owner_id: OwnerId, after_seq: int, limit: int
    ) -> list[tuple[int, Task]]:
        rows = await self._read("list_owned", owner_id, after_seq, limit)
        queued = [row[0] for row in rows if row[-1]]
        ahead = 0
        client_limit: int | None = None
        if queued:
            # Queued tasks of one owner in seq order are consecutive in its queue.
            ((ahead,),) = await self._read("queued_ahead", owner_id, queued[0])
            full = await self._read("client_limit_if_full", owner_id)
            client_limit = full[0][0] if full else None
        listed: list[tuple[int, Task]] = []
        for row in rows:
            position = None
            if row[-1]:
                position, ahead = ahead, ahead + 1
            task = _rows.task_from_row(
                (*row[1:-1], position),
                None,
                client_limit if row[-1] else None,
                sealing=self._sealing,
            )
            listed.append((row[0], task))
        return listed

    async def request_meta(self, task_id: TaskId) -> dict[str, Any]:
        rows = await self._read("request_meta_of", task_id)
        if not rows:
            return {}
        return self._sealing.loads(rows[0][0], "tasks.request_meta", task_id)

    async def events(self, task_id: TaskId) -> list[TaskEvent]:
        rows = await self._read("changes_of", task_id)
        return [_rows.event_from_row(r, task_id, self._sealing) for r in rows]

    async def steps(self, task_id: TaskId) -> dict[str, Any]:
        rows = await self._read("steps_of", task_id)
        return {
            key: self._sealing.loads(result, "steps.result", task_id, key)
            for key, result in rows
        }

    async def input_requests(self, task_id: TaskId) -> list[InputRequest]:
        rows = await self._read("input_requests_of", task_id)
        return [_rows.input_request_from_row(r, task_id, self._sealing) for r in rows]

    async def awaiting_input(self, owner_id: OwnerId, limit: int) -> list[TaskId]:
        rows = await self._read("awaiting_input", owner_id, limit)
        return [TaskId(r[0]) for r in rows]

    async def load(self, owner_id: OwnerId | None = None) -> list[ClientLoad]:
        if owner_id is None:
            rows = await self._read("load_all")
        else:
            rows = await self._read("load_one", owner_id)
        return [_rows.load_from_row(r) for r in rows]

    async def list_tasks(
        self,
        *,
        owner_id: OwnerId | None = None,
        statuses: Sequence[TaskStatus] = (),
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[TaskRow]:
        wanted = json.dumps([TaskStatus(s).value for s in statuses])
        before = _NO_SEQ_LIMIT if before_seq is None else before_seq
        rows = await self._read("list_tasks", owner_id, wanted, before, limit)
        return [_rows.task_row_from_row(r, self._sealing) for r in rows]

    # -------------------------------------------------------------- claiming

    async def claimable(self) -> bool:
        return bool(await self._read("claimable"))

    async def claim(
        self, holder: str, lease_expires_at: float, limit: int, at: float
    ) -> list[Claimed]:
        sealing = self._sealing

        def apply(db: sqlite3.Connection) -> list[Claimed]:
            claimed: list[Claimed] = []
            for _ in range(limit):
                picked = db.execute(_SQL["pick_client"]).fetchall()
                if not picked:
                    break
                ((owner,),) = picked
                rows = db.execute(
                    _SQL["claim_task"], (holder, lease_expires_at, at, owner)
                ).fetchall()
                ((turn,),) = db.execute(_SQL["next_turn"]).fetchall()
                db.execute(_SQL["serve_client"], (turn, owner))
                (
                    (
                        tid,
                        owner_id,
                        tool,
                        args,
                        meta,
                        attempts,
                        retries,
                        message,
                        created,
                    ),
                ) = rows
                _change(
                    db, self._sealing, tid, owner_id, ChangeKind.PHASE, TaskStatus.WORKING,
                    message, "claimed", at, {"holder": holder, "attempt": attempts},
                )  # fmt: skip
                claimed.append(
                    Claimed(
                        lease=Lease(TaskId(tid), holder, attempts),
                        owner_id=OwnerId(owner_id),
                        tool_name=tool,
                        arguments=sealing.loads(args, "tasks.arguments", tid),
                        request_meta=sealing.loads(meta, "tasks.request_meta", tid),
                        retries=retries,
                        created_at=created,
                    )
                )
            return claimed

        result: list[Claimed] = await self._write(apply)
        return result

    # ------------------------------------------------------ fenced run writes

    async def renew(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        def apply(db: sqlite3.Connection) -> list[Lease]:
            stop: list[Lease] = []
            for lease in leases:
                rows = db.execute(
                    _SQL["renew_lease"], (expires_at, *_fence(lease))
                ).fetchall()
                if not rows or rows[0][0] != TaskStatus.WORKING.value:
                    stop.append(lease)
            return stop

        result: list[Lease] = await self._write(apply)
        return result

    async def finish(
        self,
        lease: Lease,
        status: TaskStatus,
        reason: str,
        at: float,
        *,
        message: str | None = None,
        outcome: Outcome | None = None,
    ) -> Task | None:
        if not status.is_terminal or status is TaskStatus.CANCELLED:
            raise ValueError(f"finish ends a run completed or failed, not {status!r}")
        tool_error = self._sealing.seal_optional(
            _rows.tool_error_text(outcome), "tasks.tool_error", lease.task_id
        )
        encoded = await self._sealing.seal_off_loop(
            _rows.outcome_json(outcome), "tasks.outcome", lease.task_id
        )
        message = self._message(message, lease.task_id)
        params = (
            status.value, message, at, encoded, tool_error,
            *_retention_params(at), *_fence(lease),
        )  # fmt: skip

        def apply(db: sqlite3.Connection) -> Task | None:
            rows = db.execute(_SQL["finish"], params).fetchall()
            if not rows:
                return None
            task = _rows.task_from_row(rows[0], sealing=self._sealing)
            _change(
                db, self._sealing, lease.task_id, task.owner_id, ChangeKind.STATUS, status,
                message, reason, at,
            )  # fmt: skip
            return task

        finished: Task | None = await self._write(apply)
        return finished

    async def park(
        self,
        lease: Lease,
        not_before: float,
        message: str,
        reason: str,
        at: float,
        *,
        retry: bool = False,
    ) -> bool:
        message = self._sealing.seal(message, MESSAGE, lease.task_id)
        params = (not_before, message, at, int(retry), *_fence(lease))

        def apply(db: sqlite3.Connection) -> bool:
            rows = db.execute(_SQL["park"], params).fetchall()
            if not rows:
                return False
            ((owner,),) = rows
            _change(
                db, self._sealing, lease.task_id, owner, ChangeKind.PHASE, TaskStatus.WORKING,
                message, reason, at, {"not_before": not_before},
            )  # fmt: skip
            return True

        parked: bool = await self._write(apply)
        return parked

    async def ask(
        self, lease: Lease, requests: Sequence[InputRequest], message: str, at: float
    ) -> Task | None:
        rows_to_add = [
            (
                lease.task_id,
                r.key,
                r.method,
                self._sealing.seal(
                    _rows.dumps(r.params), "input_requests.params", lease.task_id, r.key
                ),
                at,
                r.expires_at,
            )
            for r in requests
        ]
        deadlines = [r.expires_at for r in requests if r.expires_at is not None]
        message = self._sealing.seal(message, MESSAGE, lease.task_id)

        def apply(db: sqlite3.Connection) -> Task | None:
            rows = db.execute(_SQL["ask"], (message, at, *_fence(lease))).fetchall()
            if not rows:
                return None
            task = _rows.task_from_row(rows[0], sealing=self._sealing)
            db.executemany(_SQL["add_input_request"], rows_to_add)
            data: dict[str, Any] = {"keys": [r.key for r in requests]}
            if deadlines:
                data["deadline"] = min(deadlines)
            _change(
                db, self._sealing, lease.task_id, task.owner_id, ChangeKind.STATUS,
                TaskStatus.INPUT_REQUIRED, message, "input requested", at, data,
            )  # fmt: skip
            return task

        asked: Task | None = await self._write(apply)
        return asked

    async def record_step(self, lease: Lease, key: str, result: Any, at: float) -> bool:
        encoded = self._sealing.seal(
            _rows.dumps(result), "steps.result", lease.task_id, key
        )

        def apply(db: sqlite3.Connection) -> bool:
            if not db.execute(_SQL["lease_owner"], _fence(lease)).fetchall():
                return False
            db.execute(_SQL["record_step"], (lease.task_id, key, encoded, at))
            return True

        recorded: bool = await self._write(apply)
        return recorded

    async def report(self, lease: Lease, at: float, reports: Sequence[Report]) -> bool:
        def apply(db: sqlite3.Connection) -> bool:
            for report in reports:
                stored = self._message(report.message, lease.task_id)
                params = (stored, report.progress, report.total, at)
                rows = db.execute(_SQL["report"], (*params, *_fence(lease))).fetchall()
                if not rows:
                    return False
                ((owner, current),) = rows
                data = {
                    key: value
                    for key, value in (
                        ("progress", report.progress),
                        ("total", report.total),
                    )
                    if value is not None
                }
                _change(
                    db, self._sealing, lease.task_id, owner, ChangeKind.PROGRESS, TaskStatus.WORKING,
                    current, "progress", at, data or None,
                )  # fmt: skip
            return True

        reported: bool = await self._write(apply)
        return reported

    async def log(self, lease: Lease, level: str, message: str, at: float) -> bool:
        def apply(db: sqlite3.Connection) -> bool:
            rows = db.execute(_SQL["lease_owner"], _fence(lease)).fetchall()
            if not rows:
                return False
            ((owner,),) = rows
            _change(
                db, self._sealing, lease.task_id, owner, ChangeKind.LOG, TaskStatus.WORKING,
                None, "log", at, {"level": level, "message": message},
            )  # fmt: skip
            return True

        logged: bool = await self._write(apply)
        return logged

    async def stopped(self, lease: Lease, at: float) -> bool:
        def apply(db: sqlite3.Connection) -> bool:
            rows = db.execute(_SQL["stopped"], _fence(lease)).fetchall()
            if not rows:
                return False
            ((owner,),) = rows
            _change(
                db, self._sealing, lease.task_id, owner, ChangeKind.PHASE, TaskStatus.CANCELLED,
                None, "run stopped", at,
            )  # fmt: skip
            return True

        ended: bool = await self._write(apply)
        return ended

    async def release(self, lease: Lease, message: str, reason: str, at: float) -> bool:
        message = self._sealing.seal(message, MESSAGE, lease.task_id)

        def apply(db: sqlite3.Connection) -> bool:
            rows = db.execute(
                _SQL["requeue_running"], (message, at, *_fence(lease))
            ).fetchall()
            if not rows:
                return False
            ((owner,),) = rows
            _change(
                db, self._sealing, lease.task_id, owner, ChangeKind.PHASE, TaskStatus.WORKING,
                message, reason, at,
            )  # fmt: skip
            return True

        released: bool = await self._write(apply)
        return released

    # ---------------------------------------------------------- other writes

    async def cancel(
        self, task_id: TaskId, message: str, reason: str, at: float, *, by: str
    ) -> Task | None:
        message = self._sealing.seal(message, MESSAGE, task_id)
        params = (message, at, *_retention_params(at), task_id)

        def apply(db: sqlite3.Connection) -> Task | None:
            rows = db.execute(_SQL["cancel"], params).fetchall()
            if not rows:
                return None
            task = _rows.task_from_row(rows[0], sealing=self._sealing)
            _change(
                db, self._sealing, task_id, task.owner_id, ChangeKind.STATUS, TaskStatus.CANCELLED,
                message, reason, at, {BY: by},
            )  # fmt: skip
            return task

        cancelled: Task | None = await self._write(apply)
        return cancelled

    async def retry(
        self,
        task_id: TaskId,
        message: str,
        reason: str,
        at: float,
        *,
        forget_steps: bool = False,
        by: str,
    ) -> Task | None:
        message = self._sealing.seal(message, MESSAGE, task_id)

        def apply(db: sqlite3.Connection) -> Task | None:
            rows = db.execute(_SQL["retry"], (message, at, task_id)).fetchall()
            if not rows:
                return None
            task = _rows.task_from_row(rows[0], sealing=self._sealing)
            if forget_steps:
                db.execute(_SQL["forget_steps"], (task_id,))
            _change(
                db, self._sealing, task_id, task.owner_id, ChangeKind.STATUS, TaskStatus.WORKING,
                message, reason, at, {BY: by},
            )  # fmt: skip
            return task

        retried: Task | None = await self._write(apply)
        return retried

    async def answer(
        self,
        task_id: TaskId,
        answers: Mapping[str, dict[str, Any]],
        at: float,
        *,
        by: str,
    ) -> tuple[list[str], Task | None]:
        encoded = [(key, _rows.dumps(response)) for key, response in answers.items()]
        sealing = self._sealing

        def apply(db: sqlite3.Connection) -> tuple[list[str], Task | None]:
            return _record_answers(
                db, task_id, encoded, at, "input received", by, sealing
            )

        result: tuple[list[str], Task | None] = await self._write(apply)
        return result

    async def expire_questions(
        self, now: float, response: Mapping[str, Any]
    ) -> list[TaskId]:
        encoded = _rows.dumps(dict(response))
        sealing = self._sealing

        def apply(db: sqlite3.Connection) -> list[TaskId]:
            due: dict[str, list[tuple[str, str]]] = {}
            for task_id, key in db.execute(_SQL["due_questions"], (now,)).fetchall():
                due.setdefault(task_id, []).append((key, encoded))
            resumed: list[TaskId] = []
            for task_id, pairs in due.items():
                _, done = _record_answers(
                    db, task_id, pairs, now, "question timed out", BY_SERVER, sealing
                )
                if done is not None:
                    resumed.append(TaskId(task_id))
            return resumed

        result: list[TaskId] = await self._write(apply)
        return result

    async def wake_due(self, now: float) -> int:
        def apply(db: sqlite3.Connection) -> int:
            rows = db.execute(_SQL["wake_due"], (now, now)).fetchall()
            for task_id, owner, message in rows:
                _change(
                    db, self._sealing, task_id, owner, ChangeKind.PHASE, TaskStatus.WORKING,
                    message, "wait over", now,
                )  # fmt: skip
            return len(rows)

        woken: int = await self._write(apply)
        return woken

    async def next_due(self) -> float | None:
        wakes = await self._read("next_wake")
        deadlines = await self._read("next_question_deadline")
        found = [v for v in (wakes[0][0], deadlines[0][0]) if v is not None]
        return min(found) if found else None

    async def held_leases(self, expired_before: float | None = None) -> list[HeldLease]:
        if expired_before is None:
            rows = await self._read("held_leases")
        else:
            rows = await self._read("expired_leases", expired_before)
        return [_rows.held_from_row(r) for r in rows]

    async def recover(
        self, held: HeldLease, policy: Recovery, message: str, reason: str, at: float
    ) -> bool:
        fence = _fence(held.lease)
        task_id = held.lease.task_id
        error = {"code": -32603, "message": message}
        failed_outcome = self._sealing.seal_optional(
            _rows.outcome_json(Outcome(error=error)), "tasks.outcome", task_id
        )
        message = self._sealing.seal(message, MESSAGE, task_id)

        def apply(db: sqlite3.Connection) -> bool:
            # A task cancelled while its run stopped: the run is gone, so it
            # has stopped. Whatever the policy, it only has to end its phase.
            if db.execute(_SQL["stopped"], fence).fetchall():
                _change(
                    db, self._sealing, task_id, held.owner_id, ChangeKind.PHASE,
                    TaskStatus.CANCELLED, None, reason, at, {BY: BY_SERVER},
                )  # fmt: skip
                return True
            if policy is Recovery.FAIL:
                params = (message, at, failed_outcome, *_retention_params(at), *fence)
                rows = db.execute(_SQL["fail_orphan"], params).fetchall()
                status, kind = TaskStatus.FAILED, ChangeKind.STATUS
            else:
                rows = db.execute(
                    _SQL["requeue_running"], (message, at, *fence)
                ).fetchall()
                status, kind = TaskStatus.WORKING, ChangeKind.PHASE
            if not rows:
                return False
            if policy is Recovery.RESTART:
                db.execute(_SQL["forget_steps"], (task_id,))
            owner = rows[0][1] if policy is Recovery.FAIL else rows[0][0]
            _change(
                db,
                self._sealing,
                task_id,
                owner,
                kind,
                status,
                message,
                reason,
                at,
                {BY: BY_SERVER},
            )
            return True

        recovered: bool = await self._write(apply)
        return recovered

    async def purge_expired(self, now: float, feed_before: float) -> list[TaskId]:
        children = [
            _SQL[name]
            for name in (
                "purge_expired_changes",
                "purge_expired_steps",
                "purge_expired_inputs",
            )
        ]

        def apply(db: sqlite3.Connection) -> list[TaskId]:
            for sql in children:
                db.execute(sql, (now,))
            purged = [TaskId(r[0]) for r in db.execute(_SQL["purge_expired"], (now,))]
            db.execute(_SQL["prune_feed"], (feed_before,))
            db.execute(_SQL["forget_idle_buckets"], (now - IDLE_BUCKET_SECONDS,))
            return purged

        result: list[TaskId] = await self._write(apply)
        return result

    async def sync_limits(
        self, concurrency: int, backlog: int, overrides: Mapping[str, tuple[int, int]]
    ) -> None:
        specific = [(c, b, owner) for owner, (c, b) in overrides.items()]

        def apply(db: sqlite3.Connection) -> None:
            db.execute(_SQL["sync_default_limits"], (concurrency, backlog))
            db.executemany(_SQL["sync_client_limits"], specific)

        await self._write(apply)

    async def secret(self, name: str) -> bytes:
        key = f"secret:{name}"

        def apply(db: sqlite3.Connection) -> str:
            rows = db.execute(_SQL["get_meta"], (key,)).fetchall()
            if rows:
                return str(rows[0][0])
            value = secrets.token_hex(32)
            db.execute(_SQL["put_meta"], (key, value))
            return value

        value: str = await self._write(apply)
        return bytes.fromhex(value)

    async def reseal(self, batch: int = 100) -> Resealed:
        prefix = require_keyring(self._sealing)
        sealing = self._sealing
        values = skipped = 0
        # One page per write transaction (other processes write in between),
        # each row compare-and-set on the values it read.
        pages: list[tuple[_ResealPage, Any]] = [
            (_reseal_tasks_page, 0),
            (_reseal_changes_page, 0),
            (_reseal_steps_page, ("", "")),
            (_reseal_inputs_page, ("", "")),
        ]
        for page, start in pages:
            cursor: Any = start
            while cursor is not None:
                args = (sealing, prefix, cursor, batch)
                cursor, done, lost = await self._write(partial(page, args))
                values += done
                skipped += lost

        def forget(db: sqlite3.Connection) -> tuple[str, ...]:
            recorded = [r[0] for r in db.execute(_SQL["sealing_keys"]).fetchall()]
            gone: list[str] = []
            for key_id in sorted(recorded):
                if sealing.keyring is not None and key_id == sealing.keyring.newest:
                    continue
                ((used,),) = db.execute(
                    _SQL["key_in_use"], (key_prefix(key_id),)
                ).fetchall()
                if not used:
                    db.execute(_SQL["forget_sealing_key"], (key_id,))
                    gone.append(key_id)
            return tuple(gone)

        forgotten: tuple[str, ...] = await self._write(forget)
        return Resealed(values, skipped, forgotten)

    # --------------------------------------------------------------- budgets

    async def take_budget(
        self, name: str, limits: BudgetLimits, requests: float, tokens: float, at: float
    ) -> float:
        wanted = {_budgets.REQUESTS: requests, _budgets.TOKENS: tokens}

        def apply(db: sqlite3.Connection) -> float:
            buckets = _read_buckets(db, name, limits)
            wait, after = _budgets.take(buckets, limits, wanted, at, commit=True)
            for dimension, bucket in after.items():
                db.execute(
                    _SQL["put_bucket"],
                    (name, dimension, bucket.level, bucket.updated_at),
                )
            return wait

        wait: float = await self._write(apply)
        return wait

    async def budget_wait(
        self, name: str, limits: BudgetLimits, requests: float, tokens: float, at: float
    ) -> float:
        buckets: dict[str, Bucket] = {}
        for dimension in limits.rates():
            rows = await self._read("get_bucket", name, dimension)
            if rows:
                buckets[dimension] = Bucket(rows[0][0], rows[0][1])
        wanted = {_budgets.REQUESTS: requests, _budgets.TOKENS: tokens}
        wait, _ = _budgets.take(buckets, limits, wanted, at, commit=False)
        return wait

    async def budget_left(
        self, name: str, limits: BudgetLimits, at: float
    ) -> dict[str, float]:
        left: dict[str, float] = {}
        for dimension, per_minute in limits.rates().items():
            capacity = limits.capacity(dimension)
            rows = await self._read("get_bucket", name, dimension)
            bucket = (
                Bucket(rows[0][0], rows[0][1]) if rows else Bucket.full(capacity, at)
            )
            left[dimension] = bucket.refilled(per_minute, capacity, at).level
        return left

    # ------------------------------------------------------------------ feed

    # One writer commits at a time in SQLite, so positions (AUTOINCREMENT)
    # become visible in order and the last one read is a complete cursor.

    async def feed_head(self) -> str:
        rows = await self._read("feed_head")
        return str(rows[0][0])

    async def changes(self, after: str, limit: int) -> FeedPage:
        position = _position_of(after)
        rows = await self._read("changes_after", position, limit)
        if rows:
            position = rows[-1][0]
        return FeedPage(
            [_rows.change_from_row(r, self._sealing) for r in rows], str(position)
        )


def _check_keys(db: sqlite3.Connection, sealing: Sealing, where: str) -> None:
    """Refuse a keyring that cannot open this journal; record a new key's canary."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            recorded: dict[str, str] = dict(db.execute(_SQL["sealing_keys"]).fetchall())
            new_key = check_keys(sealing, recorded, where)
            if new_key is not None:
                db.execute(_SQL["add_sealing_key"], (new_key, sealing.canary(new_key)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise JournalError(f"{where}: cannot open the journal: {exc}") from exc


_ResealArgs = tuple[Sealing, str, Any, int]
_ResealPage = Callable[[_ResealArgs, sqlite3.Connection], tuple[Any, int, int]]


def _reseal_tasks_page(
    args: _ResealArgs, db: sqlite3.Connection
) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = db.execute(_SQL["reseal_tasks_page"], (after, prefix, batch)).fetchall()
    values = skipped = 0
    for seq, task_id, *old in rows:
        new, changed = resealed_row(sealing, old, TASK_PLACES, task_id)
        if db.execute(_SQL["reseal_task"], (*new, seq, *old)).rowcount:
            values += changed
        else:
            skipped += 1
    return (rows[-1][0] if len(rows) == batch else None), values, skipped


def _reseal_changes_page(
    args: _ResealArgs, db: sqlite3.Connection
) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = db.execute(_SQL["reseal_changes_page"], (after, prefix, batch)).fetchall()
    values = skipped = 0
    for position, task_id, *old in rows:
        new, changed = resealed_row(sealing, old, CHANGE_PLACES, task_id)
        if db.execute(_SQL["reseal_change"], (*new, position, *old)).rowcount:
            values += changed
        else:
            skipped += 1
    return (rows[-1][0] if len(rows) == batch else None), values, skipped


def _reseal_steps_page(
    args: _ResealArgs, db: sqlite3.Connection
) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = db.execute(_SQL["reseal_steps_page"], (*after, prefix, batch)).fetchall()
    values = skipped = 0
    for task_id, key, result in rows:
        new, changed = resealed_row(sealing, [result], STEP_PLACES, task_id, key)
        if db.execute(_SQL["reseal_step"], (new[0], task_id, key, result)).rowcount:
            values += changed
        else:
            skipped += 1
    return (tuple(rows[-1][:2]) if len(rows) == batch else None), values, skipped


def _reseal_inputs_page(
    args: _ResealArgs, db: sqlite3.Connection
) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = db.execute(_SQL["reseal_inputs_page"], (*after, prefix, batch)).fetchall()
    values = skipped = 0
    for task_id, key, *old in rows:
        new, changed = resealed_row(sealing, old, INPUT_PLACES, task_id, key)
        if db.execute(_SQL["reseal_input"], (*new, task_id, key, *old)).rowcount:
            values += changed
        else:
            skipped += 1
    return (tuple(rows[-1][:2]) if len(rows) == batch else None), values, skipped


def _position_of(cursor: str) -> int:
    if not cursor.isascii() or not cursor.isdigit():
        raise JournalError(f"not a change feed cursor of this journal: {cursor!r}")
    return int(cursor)


def _turnstile_for(path: Path) -> Turnstile | None:
    """The journal's turnstile, or None where its sidecar cannot be made.

    Without it writers still take turns correctly, through SQLite's polling.
    """
    turnstile = Turnstile(path)
    try:
        turnstile.open()
    except OSError as exc:
        logger.warning(
            "%s: no writer turnstile (%s); processes sharing this journal will "
            "take turns more slowly",
            path,
            exc,
        )
        return None
    return turnstile


def _read_buckets(
    db: sqlite3.Connection, name: str, limits: BudgetLimits
) -> dict[str, Bucket]:
    buckets: dict[str, Bucket] = {}
    for dimension in limits.rates():
        rows = db.execute(_SQL["get_bucket"], (name, dimension)).fetchall()
        if rows:
            buckets[dimension] = Bucket(rows[0][0], rows[0][1])
    return buckets


def _record_answers(
    db: sqlite3.Connection,
    task_id: str,
    encoded: Sequence[tuple[str, str]],
    at: float,
    reason: str,
    by: str,
    sealing: Sealing,
) -> tuple[list[str], Task | None]:
    """Record answers (each once, sealed); resume the task if none is left open."""
    owners = db.execute(_SQL["owner_of"], (task_id,)).fetchall()
    if not owners:
        return [], None
    ((owner,),) = owners
    accepted: list[str] = []
    for key, response in encoded:
        stored = sealing.seal(response, "input_requests.response", task_id, key)
        if db.execute(
            _SQL["answer_input_request"], (stored, at, task_id, key)
        ).fetchall():
            accepted.append(key)
            _change(
                db, sealing, task_id, owner, ChangeKind.ANSWER, TaskStatus.INPUT_REQUIRED,
                None, reason, at, {"key": key, BY: by},
            )  # fmt: skip
    if not accepted:
        return accepted, None
    ((still_open,),) = db.execute(_SQL["open_input_count"], (task_id,)).fetchall()
    if still_open:
        return accepted, None
    message = sealing.seal("Input received; resuming", MESSAGE, task_id)
    rows = db.execute(_SQL["resume"], (message, at, task_id)).fetchall()
    if not rows:
        return accepted, None
    _change(
        db, sealing, task_id, owner, ChangeKind.STATUS, TaskStatus.WORKING, message, reason, at,
        {BY: by},
    )  # fmt: skip
    return accepted, _rows.task_from_row(rows[0], sealing=sealing)
