"""The SQLite journal: one database file, shareable by processes on one machine."""

from __future__ import annotations

from mcp_tasks.journal.sqlite._journal import SqliteJournal

__all__ = ["SqliteJournal"]
