"""Plain records passed across the journal seam (no I/O, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal

from mcp_tasks._model import OwnerId, Task, TaskId, TaskStatus


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to insert at submit: everything the journal stores up front.

    ``concurrency`` and ``backlog`` are the owner's limits as the submitting
    process is configured: the journal keeps them with the client so that any
    process can enforce them when it claims work, and checks the backlog in
    the submit transaction itself.
    """

    task_id: TaskId
    owner_id: OwnerId
    tool_name: str
    arguments: dict[str, Any]
    created_at: float
    ttl_seconds: float | None
    poll_interval_seconds: float
    concurrency: int
    backlog: int
    status_message: str | None = None
    listed: bool = True
    request_meta: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to run one task: who holds it, and for which attempt.

    Every write a run makes is fenced by its lease: it only applies while the
    task is still running under this holder and attempt. A lease taken over
    (after it expired) or ended (the task was cancelled) refuses the old run's
    late writes.
    """

    task_id: TaskId
    holder: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A task a worker claimed, with what it needs to run it."""

    lease: Lease
    owner_id: OwnerId
    tool_name: str
    arguments: dict[str, Any]
    request_meta: dict[str, Any]
    retries: int = 0
    #: When the task was submitted (None if the backend does not say): with
    #: the claim time, how long its first attempt waited in the queue.
    created_at: float | None = None

    @property
    def task_id(self) -> TaskId:
        """The claimed task."""
        return self.lease.task_id

    @property
    def attempt(self) -> int:
        """How many times the task has been claimed, this claim included."""
        return self.lease.attempt


@dataclass(frozen=True, slots=True)
class Report:
    """One status report of a run: a new status message and/or progress."""

    message: str | None = None
    progress: float | None = None
    total: float | None = None


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A running task's lease as the journal holds it (for recovery)."""

    lease: Lease
    owner_id: OwnerId
    tool_name: str
    expires_at: float


class Recovery(StrEnum):
    """What recovery does with a task whose worker is gone."""

    RESUME = "resume"  #: run it again, replaying recorded steps
    RESTART = "restart"  #: forget its recorded steps, then run it again
    FAIL = "fail"  #: end it failed


#: The key of a change's ``data`` that names who made it: the audit trail of
#: cancels, answers, recoveries and question deadlines. Values are `by_client`,
#: `by_operator` or `BY_SERVER`.
BY: Final = "by"
#: The server itself (recovering a lost run, timing out a question).
BY_SERVER: Final = "server"


def by_client(owner_id: str) -> str:
    """Who acted: a task's owner, through MCP."""
    return f"client:{owner_id}"


def by_operator(name: str) -> str:
    """Who acted: an operator (the command line, the dashboard)."""
    return f"operator:{name}"


class ChangeKind(StrEnum):
    """What a change-feed entry records. Persisted: a value, once shipped, is forever."""

    STATUS = "status"  #: the task's status changed (created, waiting, resumed, ended)
    PHASE = "phase"  #: same status, another dispatch phase (claimed, parked, requeued)
    PROGRESS = "progress"  #: a new status message or progress report from its run
    LOG = "log"  #: its run logged a message
    ANSWER = "answer"  #: one of its questions was answered (``data["key"]``)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the journal's change feed.

    ``data`` carries the kind's details (progress values, a log line, an
    answered key).
    """

    task_id: TaskId
    owner_id: OwnerId
    kind: ChangeKind
    status: TaskStatus
    status_message: str | None
    reason: str
    at: float
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class FeedPage:
    """What one read of the change feed returns: changes and where to go on.

    ``cursor`` is opaque: a follower passes it back to `Journal.changes` and
    never looks inside. SQLite can use the last position read (its writers
    commit one at a time, so positions commit in order); PostgreSQL cannot
    (sequence values are taken before commit, so a lower one can become
    visible after a higher one), and its cursor carries what it needs to
    never skip such a late commit.
    """

    changes: list[Change]
    cursor: str


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One entry of a task's history, as `Journal.events` returns it."""

    kind: ChangeKind
    status: TaskStatus
    status_message: str | None
    reason: str
    at: float
    data: dict[str, Any] | None = None

    @property
    def by(self) -> str | None:
        """Who made this change, when the journal records it (see `BY`)."""
        value = (self.data or {}).get(BY)
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class ClientLoad:
    """One client's work as the journal counts it, with its limits.

    ``parked`` counts tasks waiting for a time (a retry, budget); ``waiting``
    those waiting for an answer. ``oldest_queued_at`` is when the client's
    oldest queued task was created.
    """

    owner_id: OwnerId
    queued: int
    running: int
    parked: int
    waiting: int
    concurrency: int
    backlog: int
    oldest_queued_at: float | None = None

    @property
    def unfinished(self) -> int:
        """Every task of the client that has not ended."""
        return self.queued + self.running + self.parked + self.waiting


#: Where a task is in dispatch: waiting for a worker, running, set aside
#: (waiting for a time or an answer), or ended.
Phase = Literal["queued", "running", "parked", "done"]


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as `Journal.list_tasks` returns it to operators.

    ``seq`` is the task's position in submission order (pass the last one as
    ``before_seq`` for the next page); ``holder`` names the process whose
    lease runs it (None unless running).
    """

    seq: int
    task: Task
    phase: Phase
    attempts: int
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class Resealed:
    """What `Journal.reseal` did.

    ``values``: stored values sealed again with the newest key (plaintext
    ones included); ``skipped``: rows changed by another writer between the
    read and the compare-and-set update (left as that writer stored them);
    ``forgotten``: key ids no stored value uses any more, whose canaries
    were dropped (those keys may now leave the key file).
    """

    values: int = 0
    skipped: int = 0
    forgotten: tuple[str, ...] = ()
