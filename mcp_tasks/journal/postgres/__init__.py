"""The PostgreSQL journal: replicas on many machines sharing one database."""

from __future__ import annotations

from mcp_tasks.journal.postgres._journal import PostgresJournal

__all__ = ["PostgresJournal"]
