"""Conversions between SQLite rows and the journal's records (pure)."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from mcp_tasks._exceptions import JournalError
from mcp_tasks._model import (
    InputRequest,
    Outcome,
    OwnerId,
    Task,
    TaskId,
    TaskStatus,
    from_epoch,
)
from mcp_tasks.journal._records import (
    Change,
    ChangeKind,
    ClientLoad,
    HeldLease,
    Lease,
    NewTask,
    TaskEvent,
    TaskRow,
)
from mcp_tasks.journal._sealing import DATA, MESSAGE, NO_SEALING, Sealing

logger = logging.getLogger("mcp_tasks.journal")

#: Outcomes larger than this are parsed off the event loop.
LARGE_JSON_CHARS = 1 << 20


def dumps(value: Any) -> str:
    """Compact JSON, as every JSON column is stored."""
    return json.dumps(value, separators=(",", ":"))


def outcome_json(outcome: Outcome | None) -> str | None:
    """The stored form of an outcome (``{"result": …}`` or ``{"error": …}``)."""
    if outcome is None:
        return None
    if outcome.error is not None:
        return dumps({"error": outcome.error})
    if outcome.result is not None:
        return dumps({"result": outcome.result})
    return None


def outcome_from(data: Any) -> Outcome:
    """An outcome from its parsed stored form."""
    return Outcome(result=data.get("result"), error=data.get("error"))


def tool_error_text(outcome: Outcome | None) -> str | None:
    """The text a tool error result shows, or None if it is not a tool error."""
    if outcome is None or not outcome.is_tool_error or outcome.result is None:
        return None
    content: object = outcome.result.get("content")
    for block in cast("list[object]", content) if isinstance(content, list) else []:
        if isinstance(block, dict):
            fields = cast("dict[str, object]", block)
            if fields.get("type") == "text":
                return str(fields.get("text"))[:4000]
    return "The tool reported an error."


#: The columns every task read selects, in order (see queries.sql).
TASK_COLUMNS = 14


def task_from_row(
    row: Any,
    outcome: Outcome | None = None,
    client_limit: int | None = None,
    *,
    sealing: Sealing,
) -> Task:
    """A `Task` from the 14 task columns of a read (its tool error text opened)."""
    (
        task_id,
        owner_id,
        tool,
        status,
        message,
        created,
        updated,
        ttl,
        poll,
        listed,
        tool_error,
        progress,
        total,
        ahead,
    ) = row[:TASK_COLUMNS]
    return Task(
        task_id=TaskId(task_id),
        owner_id=OwnerId(owner_id),
        tool_name=tool,
        status=TaskStatus(status),
        status_message=sealing.unseal_optional(message, MESSAGE, task_id),
        created_at=from_epoch(created),
        last_updated_at=from_epoch(updated),
        ttl_seconds=ttl,
        poll_interval_seconds=poll,
        outcome=outcome,
        listed=bool(listed),
        tool_error=sealing.unseal_optional(tool_error, "tasks.tool_error", task_id),
        queued_ahead=ahead,
        progress=progress,
        progress_total=total,
        client_limit=client_limit,
    )


def new_task_row(task: NewTask, sealing: Sealing = NO_SEALING) -> tuple[Any, ...]:
    """The ``insert_task`` parameters of a new task (arguments and metadata sealed)."""
    expires = None if task.ttl_seconds is None else task.created_at + task.ttl_seconds
    return (
        task.task_id,
        task.owner_id,
        task.tool_name,
        sealing.seal(dumps(task.arguments), "tasks.arguments", task.task_id),
        sealing.seal_optional(task.status_message, MESSAGE, task.task_id),
        task.created_at,
        task.created_at,
        task.ttl_seconds,
        expires,
        task.poll_interval_seconds,
        1 if task.listed else 0,
        sealing.seal(dumps(task.request_meta), "tasks.request_meta", task.task_id),
    )


def new_task_change(task: NewTask, sealing: Sealing = NO_SEALING) -> tuple[Any, ...]:
    """The ``insert_change`` parameters of a new task's first change."""
    return (
        task.task_id,
        task.owner_id,
        ChangeKind.STATUS.value,
        TaskStatus.WORKING.value,
        sealing.seal_optional(task.status_message, MESSAGE, task.task_id),
        "submitted",
        task.created_at,
        None,
    )


def submitted_task(task: NewTask) -> Task:
    """The task a submit returns, as it was stored (no read needed)."""
    created = from_epoch(task.created_at)
    return Task(
        task_id=task.task_id,
        owner_id=task.owner_id,
        tool_name=task.tool_name,
        status=TaskStatus.WORKING,
        status_message=task.status_message,
        created_at=created,
        last_updated_at=created,
        ttl_seconds=task.ttl_seconds,
        poll_interval_seconds=task.poll_interval_seconds,
        listed=task.listed,
    )


def change_from_row(row: Any, sealing: Sealing) -> Change:
    """A `Change` from a ``changes_after`` row (opened).

    A change this process cannot open (sealed with a key it lacks: another
    process already writes with a newer key, during a rotation) comes without
    its message and data rather than stopping the change feed of every task;
    the task itself then reads as a clear `JournalError`.
    """
    _position, task_id, owner, kind, status, message, reason, at, data = row
    try:
        opened = sealing.unseal_optional(message, MESSAGE, task_id)
        details = None if data is None else sealing.loads(data, DATA, task_id)
    except JournalError as exc:
        logger.warning(
            "a change of task %s is delivered without its details: %s", task_id, exc
        )
        opened, details = None, None
    return Change(
        task_id=TaskId(task_id),
        owner_id=OwnerId(owner),
        kind=ChangeKind(kind),
        status=TaskStatus(status),
        status_message=opened,
        reason=reason,
        at=at,
        data=details,
    )


def event_from_row(row: Any, task_id: str, sealing: Sealing) -> TaskEvent:
    """A `TaskEvent` from a ``changes_of`` row of task ``task_id`` (opened)."""
    kind, status, message, reason, at, data = row
    return TaskEvent(
        kind=ChangeKind(kind),
        status=TaskStatus(status),
        status_message=sealing.unseal_optional(message, MESSAGE, task_id),
        reason=reason,
        at=at,
        data=None if data is None else sealing.loads(data, DATA, task_id),
    )


def held_from_row(row: Any) -> HeldLease:
    """A `HeldLease` from a ``held_leases`` row."""
    task_id, holder, attempt, owner, tool, expires = row
    return HeldLease(
        Lease(TaskId(task_id), holder, attempt), OwnerId(owner), tool, expires
    )


def input_request_from_row(row: Any, task_id: str, sealing: Sealing) -> InputRequest:
    """An `InputRequest` from an ``input_requests_of`` row (opened)."""
    key, method, params, response, expires = row
    return InputRequest(
        key=key,
        method=method,
        params=sealing.loads(params, "input_requests.params", task_id, key),
        response=None
        if response is None
        else sealing.loads(response, "input_requests.response", task_id, key),
        expires_at=expires,
    )


def load_from_row(row: Any) -> ClientLoad:
    """A `ClientLoad` from a ``load_*`` row."""
    owner, queued, running, parked, waiting, concurrency, backlog, oldest = row
    return ClientLoad(
        OwnerId(owner), queued, running, parked, waiting, concurrency, backlog, oldest
    )


def task_row_from_row(row: Any, sealing: Sealing) -> TaskRow:
    """A `TaskRow` from `list_tasks`: the task columns, then seq, phase, attempts, holder."""
    seq, phase, attempts, holder = row[TASK_COLUMNS:]
    task = task_from_row(row, sealing=sealing)
    return TaskRow(seq=seq, task=task, phase=phase, attempts=attempts, holder=holder)
