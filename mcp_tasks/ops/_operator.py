"""What the operator commands read and do, as plain JSON-ready data.

Every command opens the journal (a SQLite path or a database URL) as one
more process on it and acts through a `TaskRuntime` that runs no loops: a
cancel, an answer or a retry is exactly the operation a client's request
makes (the same checks, the same journal writes, the same change-feed entry),
so the process running the task reacts to it as it would to a client. The
operator is an unscoped requester: it may act on every client's tasks. Its
cancels, answers and retries name it in the task's history
(``operator:user@host``, the audit trail).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, cast

from mcp_tasks._config import Settings
from mcp_tasks._exceptions import JournalError
from mcp_tasks._model import InputRequest, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.engine import Requester, TaskRuntime
from mcp_tasks.journal import (
    ClientLoad,
    TaskEvent,
    TaskRow,
    open_journal,
    sealing_from,
)
from mcp_tasks.journal._open import SQLITE_PREFIX, is_url


def _operator_name() -> str:
    # Who ran the command, for the task's history (the audit trail).
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


#: Who acts when an operator command does: every client's tasks are in reach,
#: and the task's history names the operator (``operator:user@host``).
OPERATOR: Final = Requester(
    OwnerId("operator"), scoped=False, operator=_operator_name()
)
CANCEL_REASON: Final = "cancelled by operator"
RETRY_REASON: Final = "retried by operator"


def require_existing(db: str) -> None:
    """Refuse a SQLite journal file that does not exist.

    An operator's typo must not create an empty journal: servers create it;
    operators only open it.

    Raises:
        JournalError: no file at that path.
    """
    if is_url(db) and not db.startswith(SQLITE_PREFIX):
        return
    path = Path(db[len(SQLITE_PREFIX) - 1 :] if db.startswith(SQLITE_PREFIX) else db)
    if not path.exists():
        raise JournalError(
            f"{path}: no journal there (give the file the servers use with --db)"
        )


@asynccontextmanager
async def operator_runtime(
    db: Path | str, settings: Settings, tools: Mapping[str, ToolSpec]
) -> AsyncGenerator[TaskRuntime]:
    """A runtime on the journal at ``db`` that runs nothing: for one operator action.

    Raises:
        JournalError: the journal cannot be opened.
    """
    async with open_journal(
        db,
        synchronous=settings.synchronous,
        sealing=sealing_from(settings.encryption_key_file),
    ) as journal:
        yield TaskRuntime(journal, settings, tools)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def task_json(task: Task) -> dict[str, Any]:
    """A task as the operator commands print it."""
    data: dict[str, Any] = {
        "taskId": task.task_id,
        "client": task.owner_id,
        "tool": task.tool_name,
        "status": task.status.value,
        "statusMessage": task.status_message,
        "createdAt": task.created_at.isoformat(),
        "lastUpdatedAt": task.last_updated_at.isoformat(),
        "listed": task.listed,
    }
    if task.progress is not None:
        data["progress"] = task.progress
        data["total"] = task.progress_total
    if task.tool_error is not None:
        data["toolError"] = task.tool_error
    if task.outcome is not None:
        if task.outcome.result is not None:
            data["result"] = task.outcome.result
        if task.outcome.error is not None:
            data["error"] = task.outcome.error
    return data


def row_json(row: TaskRow) -> dict[str, Any]:
    """One line of ``tasks list``: the task, its dispatch phase, attempt and holder."""
    return {
        **task_json(row.task),
        "phase": row.phase,
        "attempts": row.attempts,
        "holder": row.holder,
    }


def event_json(event: TaskEvent) -> dict[str, Any]:
    """One entry of a task's history."""
    data: dict[str, Any] = {
        "at": _iso(event.at),
        "kind": event.kind.value,
        "status": event.status.value,
        "reason": event.reason,
        "statusMessage": event.status_message,
        "by": event.by,  # who cancelled, answered or retried; None otherwise
    }
    if event.data:
        data["data"] = event.data
    return data


def load_json(load: ClientLoad, now: float) -> dict[str, Any]:
    """One client's line of ``stats``."""
    age = None
    if load.oldest_queued_at is not None:
        age = round(max(0.0, now - load.oldest_queued_at), 3)
    return {
        "client": load.owner_id,
        "queued": load.queued,
        "running": load.running,
        "parked": load.parked,
        "inputRequired": load.waiting,
        "oldestQueuedAgeSeconds": age,
        "concurrency": load.concurrency,
        "backlog": load.backlog,
    }


async def list_tasks(
    runtime: TaskRuntime,
    client: str | None,
    statuses: Sequence[str],
    limit: int,
) -> list[dict[str, Any]]:
    """The newest ``limit`` tasks, of one client and/or in some statuses."""
    rows = await runtime.journal.list_tasks(
        owner_id=None if client is None else OwnerId(client),
        statuses=[TaskStatus(s) for s in statuses],
        limit=limit,
    )
    return [row_json(row) for row in rows]


async def show_task(runtime: TaskRuntime, task_id: str) -> dict[str, Any]:
    """The task with its outcome, history, recorded steps and questions.

    Raises:
        TaskNotFoundError: no such task.
    """
    task = await runtime.get(OPERATOR, task_id, outcome=True)
    journal = runtime.journal
    tid = TaskId(task_id)
    questions = [question_json(q) for q in await journal.input_requests(tid)]
    return {
        **task_json(task),
        "queuedAhead": task.queued_ahead,
        "events": [event_json(e) for e in await journal.events(tid)],
        "steps": await journal.steps(tid),
        "questions": questions,
    }


async def stats(runtime: TaskRuntime) -> dict[str, Any]:
    """Per-client load and, per process, the tasks it runs (all from the journal)."""
    now = runtime.now()
    loads = await runtime.load()
    per_process: dict[str, int] = {}
    for held in await runtime.journal.held_leases():
        per_process[held.lease.holder] = per_process.get(held.lease.holder, 0) + 1
    return {
        "at": _iso(now),
        "clients": [load_json(load, now) for load in loads],
        "processes": [
            {"holder": holder, "running": count}
            for holder, count in sorted(per_process.items())
        ],
    }


def parse_answer(text: str) -> dict[str, Any]:
    """An answer given on the command line: a JSON object.

    Raises:
        ValueError: not JSON, or not an object (the message says which).
    """
    try:
        value: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"ANSWER is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('ANSWER must be a JSON object, e.g. \'{"action": "accept"}\'')
    return dict(cast("dict[str, Any]", value))


#: How many tasks of each kind the dashboard's overview shows at most.
OVERVIEW_ACTIVE: Final = 200
OVERVIEW_WAITING: Final = 50
OVERVIEW_RECENT: Final = 20
_ACTIVE: Final = (TaskStatus.WORKING,)
_WAITING: Final = (TaskStatus.INPUT_REQUIRED,)
_FINISHED: Final = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


def question_json(question: InputRequest) -> dict[str, Any]:
    """One question a task asked, as operators see it."""
    return {
        "key": question.key,
        "method": question.method,
        "message": question.params.get("message"),
        "requestedSchema": question.params.get("requestedSchema"),
        "open": question.is_open,
        "response": question.response,
    }


def _aged(row: TaskRow, now: float) -> dict[str, Any]:
    age = max(0.0, now - row.task.created_at.timestamp())
    return {**row_json(row), "ageSeconds": round(age, 3)}


async def overview(runtime: TaskRuntime) -> dict[str, Any]:
    """What the dashboard shows, all from the journal (any process answers the same).

    Each client's load and each process's running tasks (`stats`); the newest
    working tasks (queued, running or backing off: ``phase`` says which) with
    their progress; the tasks waiting for input with their open questions; and
    the most recently finished tasks.
    """
    data = await stats(runtime)
    now = runtime.now()
    journal = runtime.journal
    active = await journal.list_tasks(statuses=_ACTIVE, limit=OVERVIEW_ACTIVE)
    waiting = await journal.list_tasks(statuses=_WAITING, limit=OVERVIEW_WAITING)
    finished = await journal.list_tasks(statuses=_FINISHED, limit=OVERVIEW_RECENT)
    waiting_json: list[dict[str, Any]] = []
    for row in waiting:
        questions = await journal.input_requests(row.task.task_id)
        waiting_json.append(
            {
                **_aged(row, now),
                "questions": [question_json(q) for q in questions if q.is_open],
            }
        )
    return {
        **data,
        "active": [_aged(row, now) for row in active],
        "waiting": waiting_json,
        "finished": [_aged(row, now) for row in finished],
    }
