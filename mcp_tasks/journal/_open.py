"""Opening a journal from a URL: the one place that knows every backend.

``sqlite:///path/to/file.db`` or a plain path selects the SQLite journal (the
default); ``postgresql://…`` the PostgreSQL journal. The engine only ever sees
the `Journal` contract, so a backend plugs in here without touching it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path

from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks.journal._base import Journal

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_url(value: str) -> bool:
    """Whether ``value`` names a journal by URL rather than by file path."""
    return "://" in value


@asynccontextmanager
async def open_journal(
    location: str | Path, *, synchronous: str = "FULL"
) -> AsyncGenerator[Journal]:
    """Open the journal at ``location`` (a path or a URL) for as long as the block runs.

    Raises:
        ConfigurationError: the URL names no backend this build knows.
        JournalError: the journal cannot be opened.
        JournalSchemaError: it was written by a newer mcp-tasks.
    """
    text = str(location)
    if isinstance(location, Path) or not is_url(text):
        path = Path(text)
    elif text.startswith(SQLITE_PREFIX):
        path = Path(text[len(SQLITE_PREFIX) - 1 :])
    elif text.startswith(POSTGRES_SCHEMES):
        raise ConfigurationError(
            "--db", "the PostgreSQL journal is not available in this build"
        )
    else:
        scheme = text.split("://", 1)[0]
        raise ConfigurationError(
            "--db",
            f"unknown journal URL scheme {scheme!r} (use a path, sqlite:/// or postgresql://)",
        )
    from mcp_tasks.journal.sqlite import SqliteJournal

    async with SqliteJournal.open(path, synchronous=synchronous) as journal:
        yield journal
