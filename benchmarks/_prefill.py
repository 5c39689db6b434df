"""Writes many queued tasks straight into a journal file, for the at-rest figures.

Submitting 100,000 tasks over HTTP takes minutes on two cores, and what the
memory and recovery figures measure is the server that *starts on* such a
journal. So the rows are written here with plain ``sqlite3``, using the
journal's own migrations and its batch insert (the function the group-commit
writer runs for submits): byte for byte the rows, changes and client counts a
server would have written for the same submits. The server then starts on
them like on any journal.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from mcp_tasks import OwnerId, TaskId
from mcp_tasks.journal._records import NewTask
from mcp_tasks.journal.sqlite._journal import _insert_batch
from mcp_tasks.journal.sqlite._schema import migrate

BATCH = 2_000


def create_journal(db: Path) -> None:
    """Create (migrate) an empty journal exactly as the server would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, db)
    finally:
        conn.close()


def prefill(
    db: Path,
    count: int,
    *,
    owner: str,
    tool: str,
    arguments: dict[str, Any],
) -> list[str]:
    """Append ``count`` queued tasks of ``owner``; return their ids (in order).

    Over HTTP with bearer tokens a task's owner is the token's plain client id
    (``binding._common.Requesters.of``), so ``owner="a"`` makes the tasks client
    ``a``'s.
    """
    if not db.exists():
        create_journal(db)
    now = time.time()
    ids: list[str] = []
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        for offset in range(0, count, BATCH):
            rows = [
                NewTask(
                    task_id=TaskId(secrets.token_urlsafe(24)),
                    owner_id=OwnerId(owner),
                    tool_name=tool,
                    arguments=arguments,
                    created_at=now,
                    ttl_seconds=86_400.0,
                    poll_interval_seconds=1.0,
                    concurrency=1_000_000,
                    backlog=1_000_000_000,
                    listed=True,
                    request_meta={},
                )
                for _ in range(min(BATCH, count - offset))
            ]
            conn.execute("BEGIN IMMEDIATE")
            refused = [r for r in _insert_batch(conn, rows) if r is not None]
            conn.execute("COMMIT")
            if refused:
                raise RuntimeError(f"prefill refused: {refused[0]}")
            ids.extend(t.task_id for t in rows)
    finally:
        conn.close()
    return ids


def count_rows(db: Path, where: str) -> int:
    """``SELECT count(*) FROM tasks WHERE <where>`` on a read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ((found,),) = conn.execute(f"SELECT count(*) FROM tasks WHERE {where}")
    finally:
        conn.close()
    return int(found)
