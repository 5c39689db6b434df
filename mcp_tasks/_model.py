"""The task model: statuses, the transition table and the immutable task record.

Pure and free of I/O. Everything else builds on these definitions; this module
imports nothing from the rest of the package except the exception tree.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NewType

from mcp_tasks._exceptions import InvalidTransitionError

TaskId = NewType("TaskId", str)
OwnerId = NewType("OwnerId", str)

#: Random bytes per task id: 192 bits, so an id is also an unguessable handle.
TASK_ID_RANDOM_BYTES = 24

# Base64 over 64 URL-unreserved characters in ASCII order, so that ids sort as
# their bytes do. ``~`` stands in for ``-`` so that no id starts with a dash.
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SORTED_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_SORTED_BASE64URL = bytes.maketrans(_BASE64URL, _SORTED_ALPHABET)


class _RandomPool:
    """Operating-system randomness fetched in blocks rather than per id.

    One ``getrandom`` call per 256 ids instead of one per id: on the submit
    path the system call cost more than the rest of building the task. The
    bytes are the same CSPRNG output ``secrets`` uses; a forked child starts
    with an empty pool so it never repeats its parent's ids. The lock is for
    interpreters without a GIL; under CPython 3.11 the slice and the index
    update cannot interleave, so no test here can tell it is missing.
    """

    BLOCK = TASK_ID_RANDOM_BYTES * 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def take(self, size: int) -> bytes:
        with self._lock:
            if self._at + size > len(self._block):
                self._block = os.urandom(max(self.BLOCK, size))
                self._at = 0
            chunk = self._block[self._at : self._at + size]
            self._at += size
            return chunk

    def _forget(self) -> None:
        self._lock = threading.Lock()  # a lock held at fork stays held in the child
        self._block = b""
        self._at = 0


_random = _RandomPool()


def new_task_id() -> TaskId:
    """A fresh task id: 40 URL-safe characters, unguessable and time-ordered.

    48 bits of milliseconds since the epoch, then 192 random bits, encoded so
    that string order is byte order. The time prefix makes ids created together
    neighbours in every index keyed by id: a batch of inserts touches a few
    B-tree pages instead of one random page per row, which halved the bytes
    each commit writes and doubled journal insert throughput (benchmarks/
    RESULTS.md). The random part alone is the capability.
    """
    return encode_task_id(
        time.time_ns() // 1_000_000, _random.take(TASK_ID_RANDOM_BYTES)
    )


def encode_task_id(millis: int, random: bytes) -> TaskId:
    """The id for ``random`` bytes drawn at ``millis`` (the pure half of `new_task_id`)."""
    raw = millis.to_bytes(6, "big") + random
    return TaskId(base64.urlsafe_b64encode(raw).translate(_SORTED_BASE64URL).decode())


class TaskStatus(StrEnum):
    """The five task statuses, spelled exactly as both MCP task wires spell them.

    The values are persisted in the journal: a value, once shipped, is forever.
    """

    WORKING = "working"  #: accepted and not finished: queued, running or backing off
    INPUT_REQUIRED = "input_required"  #: waiting for an answer from the requestor
    COMPLETED = "completed"  #: finished with a result (possibly a tool error result)
    FAILED = "failed"  #: finished with a JSON-RPC error
    CANCELLED = "cancelled"  #: stopped on request; never changes afterwards

    @property
    def is_terminal(self) -> bool:
        """Whether no further transition is allowed out of this status."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
)
ACTIVE_STATUSES = frozenset({TaskStatus.WORKING, TaskStatus.INPUT_REQUIRED})

#: The spec's state machine (2025-11-25 tasks §"Task Status Lifecycle", unchanged
#: in the 2026-07-28 extension). A task is created in ``working``.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.WORKING: frozenset(
        {
            TaskStatus.INPUT_REQUIRED,
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.INPUT_REQUIRED: frozenset(
        {
            TaskStatus.WORKING,
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}

INITIAL_STATUS = TaskStatus.WORKING


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    """Whether the state machine allows ``current -> new``."""
    return new in TRANSITIONS[current]


def check_transition(task_id: str, current: TaskStatus, new: TaskStatus) -> None:
    """Raise `InvalidTransitionError` unless ``current -> new`` is allowed."""
    if not can_transition(current, new):
        raise InvalidTransitionError(task_id, current, new)


def sources_of(new: TaskStatus) -> frozenset[TaskStatus]:
    """Every status from which ``new`` may be reached: the compare-and-set guard."""
    return frozenset(s for s, targets in TRANSITIONS.items() if new in targets)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def to_epoch(moment: datetime) -> float:
    """Seconds since the epoch for an aware datetime (the journal's time format)."""
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    """An aware UTC datetime for seconds since the epoch."""
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a finished task ended, stored once and translated per wire.

    Exactly one of ``result`` (the tool's ``CallToolResult`` as a JSON object)
    and ``error`` (a JSON-RPC error object with ``code`` and ``message``) is set.
    A cancelled task that never produced either has neither.
    """

    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def is_tool_error(self) -> bool:
        """Whether the result is a tool execution error (``isError: true``)."""
        return self.result is not None and bool(self.result.get("isError"))


@dataclass(frozen=True, slots=True)
class Task:
    """A snapshot of one task as the journal holds it.

    ``owner_id`` is the principal the task is bound to (or the fairness key of an
    anonymous requestor). ``listed`` is False for a synchronous call run
    through the engine: its caller never learned of a task. Durations are in
    seconds; ``ttl_seconds`` is ``None`` for unlimited retention.

    ``outcome`` is only loaded when asked for (it can be large); ``tool_error``
    is the text of a tool error result (``isError``) whether or not the outcome
    was loaded. ``queued_ahead`` is set while the task waits for a worker: how
    many tasks of the same client are ahead of it; ``client_limit`` then holds
    the client's concurrency limit if the client is at it (what holds the task
    back). ``progress`` and ``progress_total`` are the run's latest report.
    """

    task_id: TaskId
    owner_id: OwnerId
    tool_name: str
    status: TaskStatus
    status_message: str | None
    created_at: datetime
    last_updated_at: datetime
    ttl_seconds: float | None
    poll_interval_seconds: float
    outcome: Outcome | None = None
    listed: bool = True
    tool_error: str | None = None
    queued_ahead: int | None = None
    progress: float | None = None
    progress_total: float | None = None
    client_limit: int | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the task reached ``completed``, ``failed`` or ``cancelled``."""
        return self.status.is_terminal

    def with_status_message(self, message: str | None) -> Task:
        """This snapshot with another status message.

        Every field is passed on by hand: `dataclasses.replace` costs several
        times more, and this runs on every submit and every poll.
        """
        return Task(
            task_id=self.task_id,
            owner_id=self.owner_id,
            tool_name=self.tool_name,
            status=self.status,
            status_message=message,
            created_at=self.created_at,
            last_updated_at=self.last_updated_at,
            ttl_seconds=self.ttl_seconds,
            poll_interval_seconds=self.poll_interval_seconds,
            outcome=self.outcome,
            listed=self.listed,
            tool_error=self.tool_error,
            queued_ahead=self.queued_ahead,
            progress=self.progress,
            progress_total=self.progress_total,
            client_limit=self.client_limit,
        )


@dataclass(frozen=True, slots=True)
class InputRequest:
    """A question a task put to its requestor, and the answer once given.

    ``method`` and ``params`` are the server-to-client request that asks it
    (for example ``elicitation/create``), kept in that shape because both task
    wires carry those requests unchanged; ``key`` is unique over the task's
    lifetime. ``expires_at`` (seconds since the epoch) is when an unanswered
    question times out, if it can.
    """

    key: str
    method: str
    params: dict[str, Any]
    response: dict[str, Any] | None = None
    expires_at: float | None = None

    @property
    def is_open(self) -> bool:
        """Whether the question still waits for an answer."""
        return self.response is None
