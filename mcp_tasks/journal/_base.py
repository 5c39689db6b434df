"""The journal contract: what the engine needs from durable storage.

`Journal` is a `typing.Protocol`; its docstrings are the contract every backend
honours, and `tests/journal/contract/` checks it against each of them, with two
journal objects on one database where several processes would share it.

The journal is the engine's only state. Any number of processes may open the
same database, so no operation may rely on what one process remembers:

- **Claiming is one journal operation.** `claim` picks fairly across clients
  (the client served longest ago first, FIFO within a client) and never lets
  a client run more tasks than its concurrency cap, counted from the rows,
  whatever the number of processes.
- **Runs are fenced.** Every write a run makes carries its `Lease` (holder and
  attempt) and applies only while that lease is current; otherwise it is
  refused (a falsy return), never an error.
- **Everything else is compare-and-set** on the task's status or phase; a lost
  race is a normal outcome (``None`` or ``False``), never an exception.
- **Every change is in the change feed** (`changes`), committed with the change
  itself, so every process learns of it.

Times are seconds since the epoch, passed in by the engine (its clock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from mcp_tasks._budgets import BudgetLimits
from mcp_tasks._model import InputRequest, Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks.journal._records import (
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

#: A finished task stays readable at least this long after it finishes, even if
#: its requested retention (counted from creation) ran out while it was running.
TERMINAL_GRACE_SECONDS: Final = 60.0

#: Told the outcome of an insert once (None: committed), even without its caller.
Settled = Callable[[BaseException | None], None]


class Journal(Protocol):
    """Durable task storage shared by every process of a deployment."""

    @property
    def location(self) -> str:
        """Where the journal lives, for messages and logs (never a password)."""
        ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop after each commit this process makes.

        The engine uses it to read the change feed at once rather than at its
        next poll; other processes' commits are found by polling (or a
        backend's notifications). A backend may leave out commits no one
        waits on (PostgreSQL leaves out claims: a claim never frees a slot or
        makes work claimable); their changes arrive with the next read.
        """
        ...

    def observe_commits(self, observer: Callable[[float, int], None]) -> None:
        """Call ``observer(seconds, writes)`` on the event loop after each commit.

        For this process's metrics: how long the commit took (queueing for
        the database's write lock included) and how many writes it carried
        (a backend that commits each write alone says 1).
        """
        ...

    async def check(self) -> None:
        """Raise `JournalError` if the journal cannot accept writes now.

        Readiness: for example the database file was deleted or replaced
        under a running server.
        """
        ...

    # ------------------------------------------------------- submit and read

    async def submit(self, task: NewTask, settled: Settled | None = None) -> Task:
        """Insert a new ``working`` task (queued) and its first change; return once durable.

        The client's backlog bound (``task.backlog`` unfinished tasks) is checked
        in the same transaction: a task over it raises `CapacityError` and
        nothing is stored. The client's limits are recorded with it.
        ``settled`` is called once with the outcome (None: committed), also if
        the caller is cancelled while it waits; the insert goes ahead either way.
        """
        ...

    async def get(self, task_id: TaskId, *, outcome: bool = False) -> Task | None:
        """The task as last committed, or ``None`` if unknown or purged.

        The outcome is loaded only with ``outcome=True`` (results can be large).
        A queued task has ``queued_ahead`` set.
        """
        ...

    async def list_owned(
        self, owner_id: OwnerId, after_seq: int, limit: int
    ) -> list[tuple[int, Task]]:
        """Up to ``limit`` listed tasks of ``owner_id`` after position ``after_seq``.

        Returns ``(seq, task)`` pairs in submission order; ``seq`` is the position
        to resume after. Outcomes are not loaded.
        """
        ...

    async def request_meta(self, task_id: TaskId) -> dict[str, Any]:
        """What the binding stored with the request that created the task."""
        ...

    async def events(self, task_id: TaskId) -> list[TaskEvent]:
        """The task's history (its changes), oldest first."""
        ...

    async def steps(self, task_id: TaskId) -> dict[str, Any]:
        """Every recorded step result of the task, by step key."""
        ...

    async def input_requests(self, task_id: TaskId) -> list[InputRequest]:
        """Every question of the task, answered or not, oldest first."""
        ...

    async def awaiting_input(self, owner_id: OwnerId, limit: int) -> list[TaskId]:
        """Up to ``limit`` of the owner's tasks waiting in ``input_required``, oldest first."""
        ...

    async def load(self, owner_id: OwnerId | None = None) -> list[ClientLoad]:
        """Each client's queued, running and waiting counts (one client, or all with work).

        ``oldest_queued_at`` is the creation time of the client's first queued
        task in submission order. Cheap with any number of tasks queued (no
        scan of the queue): metrics read it at every scrape.
        """
        ...

    async def list_tasks(
        self,
        *,
        owner_id: OwnerId | None = None,
        statuses: Sequence[TaskStatus] = (),
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[TaskRow]:
        """Up to ``limit`` tasks of every client, newest first, for operators.

        Listed or not (synchronous calls too). Only ``owner_id``'s if given;
        only those in one of ``statuses`` if any are given; only those
        submitted before position ``before_seq`` (a `TaskRow.seq`) if given.
        Outcomes are not loaded and ``queued_ahead`` is not computed.
        """
        ...

    # ------------------------------------------------------------ claiming

    async def claimable(self) -> bool:
        """Whether `claim` would find a task now (a cheap read, no lock)."""
        ...

    async def claim(
        self, holder: str, lease_expires_at: float, limit: int, at: float
    ) -> list[Claimed]:
        """Claim up to ``limit`` queued tasks for ``holder``, fairly, in one transaction.

        Each pick takes the client with queued work and a free slot under its
        concurrency cap that was served longest ago (never served: first), and
        that client's oldest queued task. A client never has more running tasks
        than its cap, whatever the number of processes claiming. Each claimed
        task runs under a new `Lease` (its attempt count goes up by one).
        """
        ...

    # ------------------------------------------------------- fenced run writes

    async def renew(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        """Extend each lease still current to ``expires_at``; return the runs to stop.

        Those are the leases that are not current any more (taken over, or the
        task ended) and those of tasks cancelled meanwhile. A cancelled task's
        lease is still extended: its run holds the client's slot until it has
        stopped (`stopped`).
        """
        ...

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
        """End a running task (``completed`` or ``failed``) under its lease.

        Stores the outcome; a tool error result also sets ``tool_error``. A
        finished task stays readable at least `TERMINAL_GRACE_SECONDS` after it
        ends. Returns None (changing nothing) if the lease is not current.
        """
        ...

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
        """Set a running task aside until ``not_before``, holding no lease.

        ``retry`` counts this as a retry (backoff counts these). False if the
        lease is not current.
        """
        ...

    async def ask(
        self, lease: Lease, requests: Sequence[InputRequest], message: str, at: float
    ) -> Task | None:
        """Store the questions and move the task ``working -> input_required``.

        Keys are unique over the task's lifetime: a key asked before is not
        stored again. The task then holds no lease. None (storing nothing) if the lease is
        not current.
        """
        ...

    async def record_step(self, lease: Lease, key: str, result: Any, at: float) -> bool:
        """Record a step's JSON result once; a second record of a key is ignored.

        False if the lease is not current (nothing recorded).
        """
        ...

    async def report(self, lease: Lease, at: float, reports: Sequence[Report]) -> bool:
        """Record the run's status reports, in order, in one transaction.

        Each report is a change in the feed; the task keeps the latest message
        and progress. False (recording nothing) if the lease is not current.
        """
        ...

    async def log(self, lease: Lease, level: str, message: str, at: float) -> bool:
        """Put a log line of the run in the change feed; False if not current."""
        ...

    async def release(self, lease: Lease, message: str, reason: str, at: float) -> bool:
        """Give a running task back to the queue (for example at shutdown)."""
        ...

    async def stopped(self, lease: Lease, at: float) -> bool:
        """The run of a task cancelled while it ran has stopped: free its slot.

        Until then a cancelled task keeps its lease and counts as running for
        its client's cap (so a cancelled body that has not unwound yet and the
        client's next task never run at once). False if the lease is not
        current or the task was not cancelled.
        """
        ...

    # -------------------------------------------------------- other writes

    async def cancel(
        self, task_id: TaskId, message: str, reason: str, at: float, *, by: str
    ) -> Task | None:
        """Move an unfinished task to ``cancelled``, recording who did it (``by``).

        A queued or waiting task is done at once. A running task keeps its
        lease (and its client's slot) until its run reports `stopped`; every
        other write of that run is refused from now on. None if the task had
        already ended (or does not exist).
        """
        ...

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
        """Queue a ``failed`` task again: ``failed -> working`` (queued), a new attempt.

        Its outcome, tool error and progress are cleared; its recorded steps
        and answered questions are kept (the new attempt replays them) unless
        ``forget_steps``. The client's backlog bound is not checked (this is
        an operator's decision). The change is in the feed with ``reason``
        and who asked for it (``by``).
        None (changing nothing) if the task is not ``failed`` or unknown.
        """
        ...

    async def answer(
        self,
        task_id: TaskId,
        answers: Mapping[str, dict[str, Any]],
        at: float,
        *,
        by: str,
    ) -> tuple[list[str], Task | None]:
        """Record answers to open questions, each at most once, and who gave them.

        Returns the keys accepted and, if this answered the task's last open
        question, the task moved ``input_required -> working`` (queued).
        """
        ...

    async def expire_questions(
        self, now: float, response: Mapping[str, Any]
    ) -> list[TaskId]:
        """Answer every open question past its deadline with ``response`` (by the server).

        Returns the tasks this resumed (all their questions now answered).
        """
        ...

    async def wake_due(self, now: float) -> int:
        """Queue every parked ``working`` task whose wait ended; return how many."""
        ...

    async def next_due(self) -> float | None:
        """The earliest parked task's wake time or open question's deadline."""
        ...

    async def held_leases(self, expired_before: float | None = None) -> list[HeldLease]:
        """Running tasks' leases; only those expired before the time, if given."""
        ...

    async def recover(
        self, held: HeldLease, policy: Recovery, message: str, reason: str, at: float
    ) -> bool:
        """Take a task from a worker that is gone: run it again, restart it or fail it.

        A task that was cancelled while that worker ran it just stops (its slot
        is freed), whatever the policy. The change is recorded as the server's.

        Applies only while ``held.lease`` is still the task's current lease, so
        of several processes recovering the same task exactly one succeeds.
        """
        ...

    async def purge_expired(self, now: float, feed_before: float) -> list[TaskId]:
        """Delete finished tasks whose retention ended; return their ids.

        Also drops progress and log entries of the change feed older than
        ``feed_before`` (they are not history), and budget buckets untouched
        for ``_budgets.IDLE_BUCKET_SECONDS`` (full by then: forgetting them changes
        nothing, and clients' request buckets do not pile up).
        """
        ...

    async def sync_limits(
        self, concurrency: int, backlog: int, overrides: Mapping[str, tuple[int, int]]
    ) -> None:
        """Set every known client's limits from the configuration (at start-up)."""
        ...

    async def secret(self, name: str) -> bytes:
        """A per-database random secret, created on first use (e.g. for cursors)."""
        ...

    async def reseal(self, batch: int = 100) -> Resealed:
        """Seal every stored sealable value again with the newest key; drop unused keys.

        Task arguments, request metadata, outcomes and tool error texts, step
        results, questions and answers sealed with an older key, or stored in
        plaintext, are sealed with the newest key of the journal's keyring,
        ``batch`` rows per transaction, so it may run while servers serve.
        Each row is updated compare-and-set on the values read: a row another
        writer changed meanwhile is skipped, never overwritten. Then every
        recorded key id (other than the newest) that no stored value uses any
        more is forgotten, so that key may leave the key file. Running it
        again finds nothing to do.

        Raises:
            ConfigurationError: the journal was opened without a keyring.
            JournalError: a stored value does not open (altered, or its key
                is not in the keyring); values before it are resealed.
        """
        ...

    # -------------------------------------------------------------- budgets

    async def take_budget(
        self,
        name: str,
        limits: BudgetLimits,
        requests: float,
        tokens: float,
        at: float,
    ) -> float:
        """Take from a shared budget now and return 0, or take nothing and
        return the seconds until there is room. Exact across processes."""
        ...

    async def budget_wait(
        self,
        name: str,
        limits: BudgetLimits,
        requests: float,
        tokens: float,
        at: float,
    ) -> float:
        """Seconds until the budget could give this much (0: now); takes nothing."""
        ...

    async def budget_left(
        self, name: str, limits: BudgetLimits, at: float
    ) -> dict[str, float]:
        """What the budget could give at ``at``, per limited dimension; takes nothing.

        Keys are the dimensions ``limits`` limits (``requests``, ``tokens``); a
        budget never taken from is full (a minute's allowance). The same for
        every process (metrics read it at each scrape).
        """
        ...

    # ------------------------------------------------------------- the feed

    async def feed_head(self) -> str:
        """A cursor just past the newest committed change (a follower's start)."""
        ...

    async def changes(self, after: str, limit: int) -> FeedPage:
        """Up to ``limit`` changes committed after cursor ``after``, and the next cursor.

        Every committed change is returned exactly once to a follower that
        passes each page's cursor to its next read; one task's changes come
        in the order they were committed. ``after`` is a cursor this journal
        returned (from `feed_head` or a page), possibly from another
        instance on the same database; anything else raises `JournalError`.
        Changes purged meanwhile (`purge_expired`) are skipped, not an error.
        """
        ...
