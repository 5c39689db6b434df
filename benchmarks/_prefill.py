"""Writes many queued tasks straight into a journal file, for the at-rest figures.

Submitting 100,000 tasks over HTTP takes minutes on two cores, and what the
memory and recovery figures measure is the server that *starts on* such a
journal. So the rows are written here with plain ``sqlite3``, using the
journal's own migrations, ``insert_task``/``insert_event`` statements and row
builders: byte for byte the rows the group-commit writer would have written
for the same submits. The server then recovers them like any journal.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from mcp_tasks import OwnerId, TaskId
from mcp_tasks.journal._records import NewTask
from mcp_tasks.journal._sql import migrations, queries
from mcp_tasks.journal._writer import _event_row, _task_row

BATCH = 2_000


def create_journal(db: Path) -> None:
    """Create (migrate) an empty journal exactly as the server would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        for version, script in migrations():
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version};\nCOMMIT;"
            )
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
    sql = queries()
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
                    listed=True,
                    request_meta={},
                )
                for _ in range(min(BATCH, count - offset))
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql["insert_task"], [_task_row(t) for t in rows])
            conn.executemany(sql["insert_event"], [_event_row(t) for t in rows])
            conn.execute("COMMIT")
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
