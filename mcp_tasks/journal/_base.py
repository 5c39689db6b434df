"""The journal contract: what the engine needs from durable storage.

`Journal` is a `typing.Protocol`; its docstrings are the contract every backend
must honour (the SQLite default today, PostgreSQL later). The engine never sees
SQL and never assumes a single process: transitions are compare-and-set, and
slot usage is derived from rows, not counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from mcp_tasks._model import OwnerId, Task, TaskId
from mcp_tasks.journal._records import (
    InputRequest,
    NewTask,
    RunRecord,
    TaskEvent,
    Transition,
    UnfinishedTask,
)


class Journal(Protocol):
    """Durable task storage."""

    async def submit(
        self,
        task: NewTask,
        settled: Callable[[BaseException | None], None] | None = None,
    ) -> Task:
        """Insert a new ``working`` task and its first event; return once durable.

        Concurrent submits share one commit (group commit). ``settled`` is called
        once with the outcome (None: committed), before this returns, and also
        if the caller is cancelled while it waits: the insert goes ahead either
        way, and what must follow it belongs in ``settled``.
        """
        ...

    async def get(self, task_id: TaskId) -> Task | None:
        """The task as last committed, or ``None`` if unknown or purged."""
        ...

    async def list_owned(
        self, owner_id: OwnerId, after_seq: int, limit: int
    ) -> list[tuple[int, Task]]:
        """Up to ``limit`` listed tasks of ``owner_id`` after position ``after_seq``.

        Returns ``(seq, task)`` pairs in a stable order; ``seq`` is the position
        to resume after.
        """
        ...

    async def request_meta(self, task_id: TaskId) -> dict[str, Any]:
        """What the binding stored with the request that created the task."""
        ...

    async def seq_of(self, owner_id: OwnerId, task_id: TaskId) -> int | None:
        """The list position of ``task_id`` if it exists and belongs to ``owner_id``."""
        ...

    async def transition(self, change: Transition) -> Task | None:
        """Apply a compare-and-set status change and journal it.

        Returns the updated task, or ``None`` when the current status does not
        allow the change (another writer won, or the task is gone). Never raises
        for a lost race.
        """
        ...

    async def claim(
        self, task_id: TaskId, holder: str, lease_expires_at: float
    ) -> RunRecord | None:
        """Move a queued ``working`` task to running under a lease.

        Returns what the worker needs, or ``None`` if the task is no longer
        queued (cancelled meanwhile).
        """
        ...

    async def requeue(
        self,
        task_id: TaskId,
        status_message: str | None,
        at: float,
        reason: str = "requeued",
    ) -> bool:
        """Put a ``working`` task back in the queue, dropping any lease.

        Returns False if the task is not ``working`` (finished or waiting for input).
        """
        ...

    async def set_status_message(
        self, task_id: TaskId, message: str, at: float, reason: str | None = None
    ) -> None:
        """Record a new status message on a non-terminal task (and an event, given a reason)."""
        ...

    async def unfinished(self) -> list[UnfinishedTask]:
        """Every non-terminal task, in submission order."""
        ...

    async def expired_leases(self, now: float) -> list[UnfinishedTask]:
        """Running tasks whose lease ran out before ``now``: their worker is gone."""
        ...

    async def events(self, task_id: TaskId) -> list[TaskEvent]:
        """The task's transition journal, oldest first."""
        ...

    async def purge_expired(self, now: float) -> list[TaskId]:
        """Delete terminal tasks whose retention ended; return their ids."""
        ...

    async def steps(self, task_id: TaskId) -> dict[str, Any]:
        """Every recorded step result of the task, by step key."""
        ...

    async def record_step(
        self, task_id: TaskId, key: str, result: Any, at: float
    ) -> None:
        """Record a step's JSON result once; a second record of the key is ignored."""
        ...

    async def forget_steps(self, task_id: TaskId) -> None:
        """Drop the task's recorded steps (a tool that restarts from scratch)."""
        ...

    async def ask(
        self,
        task_id: TaskId,
        requests: list[InputRequest],
        status_message: str,
        at: float,
    ) -> Task | None:
        """Atomically store the questions and move ``working -> input_required``.

        The task is parked: it holds no lease. Returns None (storing nothing) if
        the task is no longer ``working``.
        """
        ...

    async def input_requests(self, task_id: TaskId) -> list[InputRequest]:
        """Every question of the task, answered or not, oldest first."""
        ...

    async def answer(
        self, task_id: TaskId, answers: dict[str, dict[str, Any]], at: float
    ) -> tuple[list[str], Task | None]:
        """Record answers to open questions (each at most once).

        Returns the keys that were accepted, and the task if this answered the
        last open question and moved it ``input_required -> working`` (queued).
        """
        ...

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
        """Release a running ``working`` task's lease until ``not_before``.

        ``retry`` counts this as a retry (for backoff). Returns False if the
        task was not running (cancelled meanwhile).
        """
        ...

    async def renew_leases(self, holder: str, lease_expires_at: float) -> None:
        """Extend every lease ``holder`` holds (the heartbeat)."""
        ...

    async def awaiting_input(self, owner_id: OwnerId, limit: int) -> list[TaskId]:
        """Up to ``limit`` of the owner's tasks waiting in ``input_required``."""
        ...

    async def open_input_deadlines(self) -> list[tuple[TaskId, str, float]]:
        """``(task, key, expires_at)`` of every open question that can time out."""
        ...

    async def secret(self, name: str) -> bytes:
        """A per-database random secret, created on first use (e.g. for cursors)."""
        ...
