"""Builders shared by the contract tests."""

from __future__ import annotations

import itertools
from typing import Any

from mcp_tasks._model import Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks.journal import Claimed, Journal, NewTask, by_client

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ALICE = OwnerId("alice")
BOB = OwnerId("bob")
CAROL = OwnerId("carol")
#: Who cancels or answers in tests that do not look at the audit trail.
ACTOR = by_client(ALICE)
HOLDER = "machine/1/aaaa"
OTHER_HOLDER = "machine/2/bbbb"
LEASE = 30.0

_ids = itertools.count()


def new_task(
    owner: OwnerId = ALICE,
    *,
    created_at: float = T0,
    ttl_seconds: float | None = 3600.0,
    arguments: dict[str, Any] | None = None,
    request_meta: dict[str, Any] | None = None,
    listed: bool = True,
    status_message: str | None = None,
    concurrency: int = 4,
    backlog: int = 10_000,
    tool: str = "echo",
) -> NewTask:
    return NewTask(
        task_id=TaskId(f"task-{next(_ids):06d}"),
        owner_id=owner,
        tool_name=tool,
        arguments={"n": 1} if arguments is None else arguments,
        created_at=created_at,
        ttl_seconds=ttl_seconds,
        poll_interval_seconds=1.0,
        concurrency=concurrency,
        backlog=backlog,
        status_message=status_message,
        listed=listed,
        request_meta={} if request_meta is None else request_meta,
    )


async def submit_and_claim(
    journal: Journal,
    new: NewTask | None = None,
    *,
    holder: str = HOLDER,
    at: float = T0,
) -> Claimed:
    """Submit one task and claim it (nothing else may be queued)."""
    new = new or new_task()
    await journal.submit(new)
    claimed = await journal.claim(holder, at + LEASE, 1, at)
    assert [c.task_id for c in claimed] == [new.task_id]
    return claimed[0]


async def complete(
    journal: Journal, claimed: Claimed, at: float = T0 + 1
) -> Task | None:
    """Finish a claimed task ``completed`` with an empty result."""
    return await journal.finish(
        claimed.lease,
        TaskStatus.COMPLETED,
        "test",
        at,
        outcome=Outcome(result={"content": []}),
    )
