"""`PostgresJournal`: the journal on a PostgreSQL server, shared by replicas.

Every operation is one transaction on a connection of a `psycopg_pool` pool
of autocommit connections: a read is one statement; submit and claim are one
statement each (server-side functions, one round trip); finishes that arrive
together share one transaction (`_group_commit`); other writes are a few
statements between BEGIN and COMMIT. The SQL is in
``sql/queries.sql`` and the migrations. Nothing is kept on a connection
between transactions (no session settings, no session advisory locks), so a
pooler in transaction mode (PgBouncer) may sit between the journal and the
server; only the LISTEN connection, a wake-up hint, needs a direct one
(``listen_url``).

Writes that lose a deadlock or a serialization check (possible when two
transactions touch several clients' rows in different orders) are retried.
Driver errors, the pool's included (no connection in time, pool closed: also
`psycopg.OperationalError`), are wrapped in `JournalError` here and nowhere
else. The row conversions are the SQLite journal's (`sqlite._rows`: pure
functions over tuples of the same columns).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, TypeVar, final

import anyio
import psycopg
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

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
from mcp_tasks.journal.postgres._group_commit import GroupCommit, Row
from mcp_tasks.journal.postgres._listener import CHANNEL, Listener
from mcp_tasks.journal.postgres._schema import PACKAGE, migrate, redacted
from mcp_tasks.journal.sqlite import _rows

logger = logging.getLogger("mcp_tasks.journal")

_SQL = queries(PACKAGE)

#: Connections in the pool unless configured otherwise.
DEFAULT_POOL_SIZE: Final = 8
#: How many times a write that lost a deadlock or serialization check is retried.
WRITE_ATTEMPTS: Final = 8
#: Rows a purge deletes per transaction (short transactions, vacuum-friendly).
PURGE_BATCH: Final = 500
#: Bound on connecting to the server, in seconds.
CONNECT_TIMEOUT_SECONDS: Final = 10
#: Bound on sending the last NOTIFY when the journal closes, in seconds.
CLOSING_NOTIFY_SECONDS: Final = 2.0
#: The least time between two NOTIFYs of one process (see `_notifier`).
NOTIFY_SPACING_SECONDS: Final = 0.01
#: ``before_seq`` when none is given: past any position a ``bigint`` can hold.
_NO_SEQ_LIMIT: Final = 2**63 - 1

T = TypeVar("T")
Cursor = psycopg.AsyncCursor[tuple[Any, ...]]
Connection = psycopg.AsyncConnection[tuple[Any, ...]]


def _fence(lease: Lease) -> tuple[str, str, int]:
    return (lease.task_id, lease.holder, lease.attempt)


def _retention_params(at: float) -> tuple[float, float]:
    keep_until = at + TERMINAL_GRACE_SECONDS
    return keep_until, keep_until


async def _run(cur: Cursor, name: str, *params: Any) -> list[tuple[Any, ...]]:
    await cur.execute(_SQL[name], params)
    return await cur.fetchall() if cur.description is not None else []


async def _change(
    cur: Cursor,
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
    await cur.execute(
        _SQL["insert_change"],
        (
            task_id, owner, kind.value, str(status), message, reason, at,
            None if data is None else sealing.seal(_rows.dumps(data), DATA, task_id),
        ),
    )  # fmt: skip


async def submit_group(
    conn: Connection, calls: Sequence[Sequence[Any]]
) -> list[list[Row]]:
    """``submit_task`` calls as one statement (one transaction) on ``conn``.

    ``submit_tasks`` runs them in owner order (the lock order, see
    `_group_commit`); each call's rows (its one ``(submitted,)``) come back in
    the order given.
    """
    return await _grouped(conn, "submit_group", calls)


async def finish_group(
    conn: Connection, calls: Sequence[Sequence[Any]]
) -> list[list[Row]]:
    """``finish`` calls as one statement (one transaction) on ``conn``.

    ``finish_tasks`` runs them in (owner, task id) order, the lock order that
    keeps two processes' groups from deadlocking (see `_group_commit`); each
    call's rows (none when its fence did not hold) in the order given.
    """
    return await _grouped(conn, "finish_group", calls)


async def _grouped(
    conn: Connection, name: str, calls: Sequence[Sequence[Any]]
) -> list[list[Row]]:
    # One array per parameter, one element per call; rows come back tagged
    # with their call's 1-based index.
    columns = [list(column) for column in zip(*calls, strict=True)]
    cursor = await conn.execute(_SQL[name], columns)
    results: list[list[Row]] = [[] for _ in calls]
    for row in await cursor.fetchall():
        results[int(row[0]) - 1].append(row[1:])
    return results


@final
class PostgresJournal:
    """The PostgreSQL journal. Open it with `PostgresJournal.open`."""

    def __init__(
        self,
        url: str,
        pool: AsyncConnectionPool[Connection],
        sealing: Sealing = NO_SEALING,
        notify_spacing: float = NOTIFY_SPACING_SECONDS,
    ) -> None:
        self._location = redacted(url)
        self._notify_spacing = notify_spacing
        self._sealing = sealing
        self._pool = pool
        self._committed: list[Callable[[], None]] = []
        self._commit_observers: list[Callable[[float, int], None]] = []
        #: Commits not yet covered by a NOTIFY, and the notifier's wake-up.
        self._notify_pending = False
        self._notify_wake = anyio.Event()
        self._notify_idle = anyio.Event()
        self._notify_idle.set()
        #: Our NOTIFY payload, so our own listener can ignore our own wake-ups.
        self._id = secrets.token_hex(8)
        #: Submits, and run ends, committed together (see `_group_commit`).
        self._submits = GroupCommit(self._submit_group, self._submit_one, self._told)
        self._finishes = GroupCommit(self._finish_group, self._finish_one, self._told)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        listen_url: str | None = None,
        listen: bool = True,
        prepared_statements: bool = True,
        sealing: Sealing = NO_SEALING,
        notify_spacing: float = NOTIFY_SPACING_SECONDS,
    ) -> AsyncGenerator[PostgresJournal]:
        """Open (creating or migrating the schema of) the database at ``url``.

        Args:
            url: A libpq URL (``postgresql://user@host:port/db``); a password
                may be in it or in the libpq environment (``PGPASSWORD``,
                ``~/.pgpass``).
            pool_size: The most connections this process opens for journal
                operations (the LISTEN connection is one more).
            listen_url: Where to LISTEN for other processes' changes when
                ``url`` goes through a pooler in transaction mode (default: ``url``).
            listen: Whether to LISTEN at all (without it, other processes'
                changes are found by polling alone).
            prepared_statements: False behind a pooler that cannot keep
                server-side prepared statements (PgBouncer in transaction
                mode before 1.21).
            sealing: Encrypts values at rest (`mcp_tasks.journal._sealing`).
            notify_spacing: The least seconds between two of this process's
                NOTIFYs (the first after a quiet spell goes at once).

        Raises:
            JournalSchemaError: the database was written by a newer mcp-tasks.
            JournalError: the server cannot be reached or the schema created.
            ConfigurationError: ``sealing`` cannot open this journal's values
                (a wrong or missing key), or it holds sealed values and
                ``sealing`` has no keyring.
        """
        location = redacted(url)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        }
        if not prepared_statements:
            kwargs["prepare_threshold"] = None
        try:
            conn = await psycopg.AsyncConnection.connect(url, **kwargs)
        except psycopg.Error as exc:
            raise JournalError(
                f"{location}: cannot open the journal: {_one_line(exc)}"
            ) from exc
        try:
            await migrate(conn, location)
        except psycopg.Error as exc:
            await conn.close()
            raise JournalError(
                f"{location}: cannot create the journal's schema: {_one_line(exc)}"
            ) from exc
        except BaseException:
            await conn.close()
            raise
        try:
            await _check_keys(conn, sealing, location)
        except psycopg.Error as exc:
            raise JournalError(
                f"{location}: cannot open the journal: {_one_line(exc)}"
            ) from exc
        finally:
            await conn.close()
        pool = AsyncConnectionPool[Connection](
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            open=False,
            name="mcp-tasks journal",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except psycopg.Error as exc:
            await pool.close()
            raise JournalError(
                f"{location}: cannot open the journal: {_one_line(exc)}"
            ) from exc
        journal = cls(url, pool, sealing, notify_spacing)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal._notifier)
                tg.start_soon(journal._submits.run)
                tg.start_soon(journal._finishes.run)
                if listen:
                    listener = Listener(
                        listen_url or url, kwargs, journal._tell_callbacks, journal._id
                    )
                    await tg.start(listener.run)
                try:
                    yield journal
                finally:
                    await journal._flush_notify()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close()

    # ------------------------------------------------------------ plumbing

    @property
    def location(self) -> str:
        return self._location

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit of this process (and on NOTIFY)."""
        self._committed.append(callback)

    def observe_commits(self, observer: Callable[[float, int], None]) -> None:
        """Call ``observer(seconds, writes)`` after each transaction this process commits.

        The seconds run from asking the pool for a connection to the commit
        (waiting for a connection, and for row locks, included), retries of a
        lost deadlock included. Each transaction is one write, except a group
        of finishes (``writes`` of them, timed from the first one's arrival).
        """
        self._commit_observers.append(observer)

    def _tell(self, started: float) -> None:
        """This process committed one write: tell observers, callbacks, others."""
        self._told(time.perf_counter() - started, 1)

    def _told(self, seconds: float, writes: int) -> None:
        """This process committed ``writes`` writes in one transaction: tell
        observers, callbacks and other processes (NOTIFY)."""
        self._observed(seconds, writes)
        self._tell_callbacks()
        self._notify_pending = True
        self._notify_wake.set()

    def _observed(self, seconds: float, writes: int) -> None:
        """Tell the commit observers (metrics) only."""
        for observer in self._commit_observers:
            observer(seconds, writes)

    def _tell_callbacks(self) -> None:
        for callback in self._committed:
            callback()

    async def _notifier(self) -> None:
        """Wake other processes after our commits: at most one NOTIFY in flight.

        Sent after the commit, in a transaction of its own (`changes` waits for
        it: see there), rather than from the write transaction: PostgreSQL holds a global lock from a notifying
        transaction's pre-commit through its commit, which would serialise every
        journal write of every process. Commits made while one NOTIFY is sent
        are covered by the next one. A lost NOTIFY costs only latency: every
        process polls.

        Under load commits come far faster than wake-ups are worth sending
        (each is a round trip and a transaction): after one NOTIFY the next
        waits ``notify_spacing`` (10 ms), covering every commit made
        meanwhile. The first commit after a quiet spell is announced at once.
        """
        while True:
            await self._notify_wake.wait()
            self._notify_wake = anyio.Event()
            if self._notify_pending:  # not already sent by `_flush_notify`
                await self._send_notify()
                await anyio.sleep(self._notify_spacing)

    async def _send_notify(self) -> None:
        """One NOTIFY covering every commit made so far."""
        self._notify_pending = False
        self._notify_idle = idle = anyio.Event()
        try:
            async with self._pool.connection() as conn:
                await conn.execute(_SQL["notify"], (CHANNEL, self._id))
        except psycopg.Error as exc:
            logger.debug("NOTIFY failed (%s); other processes will poll", exc)
        finally:
            idle.set()

    async def _flush_notify(self) -> None:
        """Let the NOTIFY of our last commits go out before the journal closes.

        A process that writes once and exits (an operator's ``tasks cancel``)
        would otherwise cut it off mid-query: the other processes would learn
        of the change only at their next poll, and psycopg, interrupted while
        cancelling the query, warns. Bounded, and shielded so a closing
        server still tells the others; a NOTIFY that cannot be sent by then
        costs only latency.
        """
        deadline = anyio.current_time() + CLOSING_NOTIFY_SECONDS
        with anyio.CancelScope(shield=True, deadline=deadline):
            while True:
                if not self._notify_idle.is_set():  # one in flight: let it end
                    await self._notify_idle.wait()
                elif self._notify_pending:
                    # Sent here, not by the notifier: it may be cancelled
                    # already (when the journal's owner was).
                    await self._send_notify()
                else:
                    return

    async def check(self) -> None:
        await self._read("claimable")

    async def _read(self, name: str, *params: Any) -> list[tuple[Any, ...]]:
        return await self._fetch(name, params)

    async def _fetch(
        self, name: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(_SQL[name], params)
                return await cursor.fetchall()
        except psycopg.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc

    async def _write(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction, retrying lost deadlocks; then tell listeners."""
        started = time.perf_counter()
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                async with self._pool.connection() as conn:
                    async with conn.transaction(), conn.cursor() as cur:
                        result = await fn(cur)
            except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise JournalError(f"journal write failed: {exc}") from exc
                logger.debug("journal write retried after %s", type(exc).__name__)
                continue
            except psycopg.Error as exc:
                raise JournalError(f"journal write failed: {exc}") from exc
            self._tell(started)
            return result
        raise AssertionError("unreachable")

    async def _statement(self, name: str, params: Sequence[Any]) -> list[Row]:
        """One statement as its own transaction (autocommit: one round trip),
        telling no one: lost deadlocks retried, errors wrapped."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(_SQL[name], params)
                    return await cursor.fetchall()
            except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise JournalError(f"journal write failed: {exc}") from exc
                logger.debug("journal write retried after %s", type(exc).__name__)
            except psycopg.Error as exc:
                raise JournalError(f"journal write failed: {exc}") from exc
        raise AssertionError("unreachable")

    async def _submit_one(self, params: Sequence[Any]) -> list[Row]:
        return await self._statement("submit_task", params)

    async def _submit_group(self, calls: Sequence[Sequence[Any]]) -> list[list[Row]]:
        """Several submits in one transaction (see `submit_group`).

        Raises psycopg errors as they are: `GroupCommit` then runs each
        submit on its own (with `_submit_one`'s retries), so a lost deadlock
        or one failing row costs a retry, never another task's submit.
        """
        async with self._pool.connection() as conn:
            return await submit_group(conn, calls)

    async def _finish_one(self, params: Sequence[Any]) -> list[Row]:
        return await self._statement("finish", params)

    async def _finish_group(self, calls: Sequence[Sequence[Any]]) -> list[list[Row]]:
        """Several finishes in one transaction (see `finish_group`); errors
        as for `_submit_group`."""
        async with self._pool.connection() as conn:
            return await finish_group(conn, calls)

    # ---------------------------------------------------------- submit, read

    async def submit(self, task: NewTask, settled: Settled | None = None) -> Task:
        # One statement (its own transaction), or a share of one when other
        # submits arrive during a commit (`GroupCommit`).
        params = (
            *_rows.new_task_row(task, self._sealing),
            task.concurrency,
            task.backlog,
        )
        error: BaseException | None = None
        try:
            # The insert goes ahead even if our caller is cancelled meanwhile,
            # and `settled` hears how it ended.
            with anyio.CancelScope(shield=True):
                rows = await self._submits.call(params)
                if not rows[0][0]:
                    raise CapacityError(task.owner_id, task.backlog)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if settled is not None:
                settled(error)
        return _rows.submitted_task(task)

    async def get(self, task_id: TaskId, *, outcome: bool = False) -> Task | None:
        rows = await self._read("get_task", outcome, task_id)
        if not rows:
            return None
        row = rows[0]
        text: str | None = row[_rows.TASK_COLUMNS]
        client_limit: int | None = row[_rows.TASK_COLUMNS + 1]
        loaded = None
        if text is not None:
            place = ("tasks.outcome", task_id)
            if len(text) > _rows.LARGE_JSON_CHARS:
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
        params = {
            "owner": owner_id,
            "statuses": [TaskStatus(s).value for s in statuses],
            "before": _NO_SEQ_LIMIT if before_seq is None else before_seq,
            "limit": limit,
        }
        rows = await self._fetch("list_tasks", params)
        return [_rows.task_row_from_row(r, self._sealing) for r in rows]

    # -------------------------------------------------------------- claiming

    async def claimable(self) -> bool:
        return bool(await self._read("claimable"))

    async def claim(
        self, holder: str, lease_expires_at: float, limit: int, at: float
    ) -> list[Claimed]:
        # A claim is news to no one at once: it never frees a slot or makes
        # work claimable, and the claimed task's run is here. So it wakes no
        # follower (ours or, by NOTIFY, another process's): they read its
        # change with the next one, or at their next poll. Under load that
        # spares a feed read and a NOTIFY per claim.
        started = time.perf_counter()
        rows = await self._statement("claim", (holder, lease_expires_at, limit, at))
        self._observed(time.perf_counter() - started, 1)
        return [
            Claimed(
                lease=Lease(TaskId(tid), holder, attempts),
                owner_id=OwnerId(owner),
                tool_name=tool,
                arguments=self._sealing.loads(args, "tasks.arguments", tid),
                request_meta=self._sealing.loads(meta, "tasks.request_meta", tid),
                retries=retries,
                created_at=created,
            )
            for tid, owner, tool, args, meta, attempts, retries, created in rows
        ]

    # ------------------------------------------------------ fenced run writes

    async def renew(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        async def apply(cur: Cursor) -> list[Lease]:
            stop: list[Lease] = []
            for lease in leases:
                rows = await _run(cur, "renew_lease", expires_at, *_fence(lease))
                if not rows or rows[0][0] != TaskStatus.WORKING.value:
                    stop.append(lease)
            return stop

        return await self._write(apply)

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
        message = self._sealing.seal_optional(message, MESSAGE, lease.task_id)
        keep_until, _ = _retention_params(at)
        rows = await self._finishes.call(
            (status.value, message, at, encoded, tool_error, keep_until,
             *_fence(lease), reason),
        )  # fmt: skip
        return _rows.task_from_row(rows[0], sealing=self._sealing) if rows else None

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

        async def apply(cur: Cursor) -> bool:
            rows = await _run(cur, "park", *params)
            if not rows:
                return False
            ((owner,),) = rows
            await _change(
                cur, self._sealing, lease.task_id, owner, ChangeKind.PHASE, TaskStatus.WORKING,
                message, reason, at, {"not_before": not_before},
            )  # fmt: skip
            return True

        return await self._write(apply)

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

        async def apply(cur: Cursor) -> Task | None:
            rows = await _run(cur, "ask", message, at, *_fence(lease))
            if not rows:
                return None
            task = _rows.task_from_row(rows[0], sealing=self._sealing)
            if rows_to_add:
                await cur.executemany(_SQL["add_input_request"], rows_to_add)
            data: dict[str, Any] = {"keys": [r.key for r in requests]}
            if deadlines:
                data["deadline"] = min(deadlines)
            await _change(
                cur, self._sealing, lease.task_id, task.owner_id, ChangeKind.STATUS,
                TaskStatus.INPUT_REQUIRED, message, "input requested", at, data,
            )  # fmt: skip
            return task

        return await self._write(apply)

    async def record_step(self, lease: Lease, key: str, result: Any, at: float) -> bool:
        encoded = self._sealing.seal(
            _rows.dumps(result), "steps.result", lease.task_id, key
        )

        async def apply(cur: Cursor) -> bool:
            # The row lock keeps the lease current until this commits.
            if not await _run(cur, "lease_owner", *_fence(lease)):
                return False
            await cur.execute(_SQL["record_step"], (lease.task_id, key, encoded, at))
            return True

        return await self._write(apply)

    async def report(self, lease: Lease, at: float, reports: Sequence[Report]) -> bool:
        class _Refused(Exception):
            pass

        async def apply(cur: Cursor) -> bool:
            for report in reports:
                stored = self._sealing.seal_optional(
                    report.message, MESSAGE, lease.task_id
                )
                params = (stored, report.progress, report.total, at)
                rows = await _run(cur, "report", *params, *_fence(lease))
                if not rows:
                    # Record nothing: roll back the reports written before.
                    raise _Refused
                ((owner, current),) = rows
                data = {
                    key: value
                    for key, value in (
                        ("progress", report.progress),
                        ("total", report.total),
                    )
                    if value is not None
                }
                await _change(
                    cur, self._sealing, lease.task_id, owner, ChangeKind.PROGRESS, TaskStatus.WORKING,
                    current, "progress", at, data or None,
                )  # fmt: skip
            return True

        try:
            return await self._write(apply)
        except _Refused:
            return False

    async def log(self, lease: Lease, level: str, message: str, at: float) -> bool:
        async def apply(cur: Cursor) -> bool:
            rows = await _run(cur, "lease_owner", *_fence(lease))
            if not rows:
                return False
            ((owner,),) = rows
            await _change(
                cur, self._sealing, lease.task_id, owner, ChangeKind.LOG, TaskStatus.WORKING,
                None, "log", at, {"level": level, "message": message},
            )  # fmt: skip
            return True

        return await self._write(apply)

    async def stopped(self, lease: Lease, at: float) -> bool:
        async def apply(cur: Cursor) -> bool:
            rows = await _run(cur, "stopped", *_fence(lease))
            if not rows:
                return False
            ((owner,),) = rows
            await _change(
                cur, self._sealing, lease.task_id, owner, ChangeKind.PHASE, TaskStatus.CANCELLED,
                None, "run stopped", at,
            )  # fmt: skip
            return True

        return await self._write(apply)

    async def release(self, lease: Lease, message: str, reason: str, at: float) -> bool:
        message = self._sealing.seal(message, MESSAGE, lease.task_id)

        async def apply(cur: Cursor) -> bool:
            rows = await _run(cur, "requeue_running", message, at, *_fence(lease))
            if not rows:
                return False
            ((owner,),) = rows
            await _change(
                cur, self._sealing, lease.task_id, owner, ChangeKind.PHASE, TaskStatus.WORKING,
                message, reason, at,
            )  # fmt: skip
            return True

        return await self._write(apply)

    # ---------------------------------------------------------- other writes

    async def cancel(
        self, task_id: TaskId, message: str, reason: str, at: float, *, by: str
    ) -> Task | None:
        message = self._sealing.seal(message, MESSAGE, task_id)
        params = (message, at, *_retention_params(at), task_id)

        async def apply(cur: Cursor) -> Task | None:
            rows = await _run(cur, "cancel", *params)
            if not rows:
                return None
            task = _rows.task_from_row(rows[0], sealing=self._sealing)
            await _change(
                cur, self._sealing, task_id, task.owner_id, ChangeKind.STATUS, TaskStatus.CANCELLED,
                message, reason, at, {BY: by},
            )  # fmt: skip
            return task

        return await self._write(apply)

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

        async def apply(cur: Cursor) -> Task | None:
            # Compare-and-set on `failed`: of two retries at once, the second
            # re-checks the row after the first commits and finds it working.
            rows = await _run(cur, "retry", message, at, task_id)
            if not rows:
                return None
            task = _rows.task_from_row(rows[0], sealing=self._sealing)
            if forget_steps:
                await cur.execute(_SQL["forget_steps"], (task_id,))
            await _change(
                cur, self._sealing, task_id, task.owner_id, ChangeKind.STATUS, TaskStatus.WORKING,
                message, reason, at, {BY: by},
            )  # fmt: skip
            return task

        return await self._write(apply)

    async def answer(
        self,
        task_id: TaskId,
        answers: Mapping[str, dict[str, Any]],
        at: float,
        *,
        by: str,
    ) -> tuple[list[str], Task | None]:
        encoded = [(key, _rows.dumps(response)) for key, response in answers.items()]

        async def apply(cur: Cursor) -> tuple[list[str], Task | None]:
            return await _record_answers(
                cur, task_id, encoded, at, "input received", by, self._sealing
            )

        return await self._write(apply)

    async def expire_questions(
        self, now: float, response: Mapping[str, Any]
    ) -> list[TaskId]:
        encoded = _rows.dumps(dict(response))

        async def apply(cur: Cursor) -> list[TaskId]:
            due: dict[str, list[tuple[str, str]]] = {}
            for task_id, key in await _run(cur, "due_questions", now):
                due.setdefault(task_id, []).append((key, encoded))
            resumed: list[TaskId] = []
            # Task by task in id order: two processes expiring at once lock
            # the same rows in the same order.
            for task_id, pairs in sorted(due.items()):
                _, done = await _record_answers(
                    cur, task_id, pairs, now, "question timed out", BY_SERVER,
                    self._sealing,
                )  # fmt: skip
                if done is not None:
                    resumed.append(TaskId(task_id))
            return resumed

        return await self._write(apply)

    async def wake_due(self, now: float) -> int:
        async def apply(cur: Cursor) -> int:
            rows = await _run(cur, "wake_due", now, now)
            for task_id, owner, message in rows:
                await _change(
                    cur, self._sealing, task_id, owner, ChangeKind.PHASE, TaskStatus.WORKING,
                    message, "wait over", now,
                )  # fmt: skip
            return len(rows)

        return await self._write(apply)

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

        async def apply(cur: Cursor) -> bool:
            if await _run(cur, "stopped", *fence):
                await _change(
                    cur, self._sealing, task_id, held.owner_id, ChangeKind.PHASE,
                    TaskStatus.CANCELLED, None, reason, at, {BY: BY_SERVER},
                )  # fmt: skip
                return True
            if policy is Recovery.FAIL:
                params = (message, at, failed_outcome, *_retention_params(at), *fence)
                rows = await _run(cur, "fail_orphan", *params)
                status, kind = TaskStatus.FAILED, ChangeKind.STATUS
            else:
                rows = await _run(cur, "requeue_running", message, at, *fence)
                status, kind = TaskStatus.WORKING, ChangeKind.PHASE
            if not rows:
                return False
            if policy is Recovery.RESTART:
                await cur.execute(_SQL["forget_steps"], (task_id,))
            owner = rows[0][1] if policy is Recovery.FAIL else rows[0][0]
            await _change(
                cur,
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

        return await self._write(apply)

    async def purge_expired(self, now: float, feed_before: float) -> list[TaskId]:
        # Bounded batches, each its own short transaction: no long lock, and
        # vacuum can reclaim what one batch freed while the next runs.
        async def purge_batch(cur: Cursor) -> list[TaskId]:
            ids = [r[0] for r in await _run(cur, "purge_expired", now, PURGE_BATCH)]
            if ids:
                for name in ("purge_changes_of", "purge_steps_of", "purge_inputs_of"):
                    await cur.execute(_SQL[name], (ids,))
            return [TaskId(i) for i in ids]

        async def prune_batch(cur: Cursor) -> int:
            await cur.execute(_SQL["prune_feed"], (feed_before, PURGE_BATCH))
            return cur.rowcount

        purged: list[TaskId] = []
        while True:
            batch = await self._write(purge_batch)
            purged += batch
            if len(batch) < PURGE_BATCH:
                break
        while await self._write(prune_batch) >= PURGE_BATCH:
            pass

        # Idle for an hour, a bucket is full: forgetting it changes nothing. A
        # take racing this delete either committed first (then its fresh
        # `updated_at` fails the re-checked WHERE and the row stays) or writes
        # its row again after the delete, from the full bucket it computed.
        async def forget_buckets(cur: Cursor) -> None:
            await cur.execute(_SQL["forget_idle_buckets"], (now - IDLE_BUCKET_SECONDS,))

        await self._write(forget_buckets)
        return purged

    async def sync_limits(
        self, concurrency: int, backlog: int, overrides: Mapping[str, tuple[int, int]]
    ) -> None:
        specific = [(c, b, owner) for owner, (c, b) in overrides.items()]

        async def apply(cur: Cursor) -> None:
            await cur.execute(_SQL["sync_default_limits"], (concurrency, backlog))
            if specific:
                await cur.executemany(_SQL["sync_client_limits"], specific)

        await self._write(apply)

    async def secret(self, name: str) -> bytes:
        key = f"secret:{name}"

        async def apply(cur: Cursor) -> str:
            # Of two processes creating it at once, the first insert wins and
            # both read that one.
            await cur.execute(_SQL["put_meta"], (key, secrets.token_hex(32)))
            ((value,),) = await _run(cur, "get_meta", key)
            return str(value)

        value = await self._write(apply)
        return bytes.fromhex(value)

    async def reseal(self, batch: int = 100) -> Resealed:
        prefix = require_keyring(self._sealing)
        sealing = self._sealing
        values = skipped = 0
        # One page per transaction, each row compare-and-set on the values
        # read: a writer that changed the row meanwhile wins (read committed
        # re-checks the WHERE against its committed row).
        pages: list[tuple[_ResealPage, Any]] = [
            (_reseal_tasks_page, 0),
            (_reseal_changes_page, ("0", 0)),
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

        async def forget(cur: Cursor) -> tuple[str, ...]:
            recorded = [r[0] for r in await _run(cur, "sealing_keys")]
            gone: list[str] = []
            for key_id in sorted(recorded):
                if sealing.keyring is not None and key_id == sealing.keyring.newest:
                    continue
                ((used,),) = await _run(cur, "key_in_use", key_prefix(key_id))
                if not used:
                    await cur.execute(_SQL["forget_sealing_key"], (key_id,))
                    gone.append(key_id)
            return tuple(gone)

        forgotten = await self._write(forget)
        return Resealed(values, skipped, forgotten)

    # --------------------------------------------------------------- budgets

    async def take_budget(
        self, name: str, limits: BudgetLimits, requests: float, tokens: float, at: float
    ) -> float:
        wanted = {_budgets.REQUESTS: requests, _budgets.TOKENS: tokens}

        async def apply(cur: Cursor) -> float:
            # One budget's takers queue on a transaction-scoped lock (its
            # bucket rows may not exist yet, so a row lock cannot do it).
            await cur.execute(_SQL["lock_budget"], (name,))
            buckets = await _read_buckets(cur, name, limits)
            wait, after = _budgets.take(buckets, limits, wanted, at, commit=True)
            for dimension, bucket in after.items():
                await cur.execute(
                    _SQL["put_bucket"],
                    (name, dimension, bucket.level, bucket.updated_at),
                )
            return wait

        return await self._write(apply)

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

    # A cursor is "KEY:POSITION": every change at or before (KEY, POSITION) in
    # (feed_key, position) order has been read. Changes are read only below
    # the horizon (the oldest running transaction id), where no change can
    # appear any more; see `add_change` in the first migration.

    async def feed_head(self) -> str:
        ((horizon,),) = await self._read("feed_head")
        return f"{horizon}:0"

    async def changes(self, after: str, limit: int) -> FeedPage:
        key, position = _cursor_of(after)
        # A NOTIFY is a transaction with an id of its own: while ours is being
        # committed it holds the horizon below the changes we committed just
        # after it started. Let it finish, so a read right after our own
        # commits sees them.
        await self._notify_idle.wait()
        rows = await self._read("changes_after", str(key), position, limit)
        horizon = int(rows[0][-1])
        found = [r for r in rows if r[0] is not None]
        if len(found) == limit and found:
            last = found[-1]
            cursor = (int(last[-2]), int(last[0]))
        else:
            # Everything below the horizon has been read.
            cursor = max((key, position), (horizon, 0))
        return FeedPage(
            [_rows.change_from_row(r[:9], self._sealing) for r in found],
            f"{cursor[0]}:{cursor[1]}",
        )


def _one_line(error: Exception) -> str:
    """A driver message on one line (libpq adds hints on lines of their own)."""
    return " ".join(str(error).split())


async def _check_keys(conn: Connection, sealing: Sealing, location: str) -> None:
    """Refuse a keyring that cannot open this journal; record a new key's canary."""
    async with conn.transaction():
        cursor = await conn.execute(_SQL["sealing_keys"])
        recorded = {str(k): str(v) for k, v in await cursor.fetchall()}
        new_key = check_keys(sealing, recorded, location)
        if new_key is not None:
            await conn.execute(
                _SQL["add_sealing_key"], (new_key, sealing.canary(new_key))
            )


_ResealArgs = tuple[Sealing, str, Any, int]
_ResealPage = Callable[[_ResealArgs, Cursor], Awaitable[tuple[Any, int, int]]]


async def _reseal_tasks_page(args: _ResealArgs, cur: Cursor) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = await _run(cur, "reseal_tasks_page", after, prefix, batch)
    values = skipped = 0
    for seq, task_id, *old in rows:
        new, changed = resealed_row(sealing, old, TASK_PLACES, task_id)
        await cur.execute(_SQL["reseal_task"], (*new, seq, *old))
        if cur.rowcount:
            values += changed
        else:
            skipped += 1
    return (rows[-1][0] if len(rows) == batch else None), values, skipped


async def _reseal_changes_page(args: _ResealArgs, cur: Cursor) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = await _run(cur, "reseal_changes_page", *after, prefix, batch)
    values = skipped = 0
    for feed_key, position, task_id, *old in rows:
        new, changed = resealed_row(sealing, old, CHANGE_PLACES, task_id)
        await cur.execute(_SQL["reseal_change"], (*new, feed_key, position, *old))
        if cur.rowcount:
            values += changed
        else:
            skipped += 1
    return (tuple(rows[-1][:2]) if len(rows) == batch else None), values, skipped


async def _reseal_steps_page(args: _ResealArgs, cur: Cursor) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = await _run(cur, "reseal_steps_page", *after, prefix, batch)
    values = skipped = 0
    for task_id, key, result in rows:
        new, changed = resealed_row(sealing, [result], STEP_PLACES, task_id, key)
        await cur.execute(_SQL["reseal_step"], (new[0], task_id, key, result))
        if cur.rowcount:
            values += changed
        else:
            skipped += 1
    return (tuple(rows[-1][:2]) if len(rows) == batch else None), values, skipped


async def _reseal_inputs_page(args: _ResealArgs, cur: Cursor) -> tuple[Any, int, int]:
    sealing, prefix, after, batch = args
    rows = await _run(cur, "reseal_inputs_page", *after, prefix, batch)
    values = skipped = 0
    for task_id, key, *old in rows:
        new, changed = resealed_row(sealing, old, INPUT_PLACES, task_id, key)
        await cur.execute(_SQL["reseal_input"], (*new, task_id, key, *old))
        if cur.rowcount:
            values += changed
        else:
            skipped += 1
    return (tuple(rows[-1][:2]) if len(rows) == batch else None), values, skipped


def _cursor_of(cursor: str) -> tuple[int, int]:
    key, sep, position = cursor.partition(":")
    if (
        not sep
        or not (key.isascii() and key.isdigit())
        or not (position.isascii() and position.isdigit())
    ):
        raise JournalError(f"not a change feed cursor of this journal: {cursor!r}")
    return int(key), int(position)


async def _read_buckets(
    cur: Cursor, name: str, limits: BudgetLimits
) -> dict[str, Bucket]:
    buckets: dict[str, Bucket] = {}
    for dimension in limits.rates():
        rows = await _run(cur, "get_bucket", name, dimension)
        if rows:
            buckets[dimension] = Bucket(rows[0][0], rows[0][1])
    return buckets


async def _record_answers(
    cur: Cursor,
    task_id: str,
    encoded: Sequence[tuple[str, str]],
    at: float,
    reason: str,
    by: str,
    sealing: Sealing,
) -> tuple[list[str], Task | None]:
    """Record answers (each once, sealed) and who gave them; resume the task if none is open.

    The task row is locked first, so two answers to one task take turns and
    the second sees the first's when it counts the questions left open.
    """
    owners = await _run(cur, "owner_of", task_id)
    if not owners:
        return [], None
    ((owner,),) = owners
    accepted: list[str] = []
    for key, response in encoded:
        stored = sealing.seal(response, "input_requests.response", task_id, key)
        if await _run(cur, "answer_input_request", stored, at, task_id, key):
            accepted.append(key)
            await _change(
                cur, sealing, task_id, owner, ChangeKind.ANSWER, TaskStatus.INPUT_REQUIRED,
                None, reason, at, {"key": key, BY: by},
            )  # fmt: skip
    if not accepted:
        return accepted, None
    ((still_open,),) = await _run(cur, "open_input_count", task_id)
    if still_open:
        return accepted, None
    message = sealing.seal("Input received; resuming", MESSAGE, task_id)
    rows = await _run(cur, "resume", message, at, task_id)
    if not rows:
        return accepted, None
    await _change(
        cur, sealing, task_id, owner, ChangeKind.STATUS, TaskStatus.WORKING, message, reason, at,
        {BY: by},
    )  # fmt: skip
    return accepted, _rows.task_from_row(rows[0], sealing=sealing)
