"""Opening a journal from a URL: the one place that knows every backend.

``sqlite:///path/to/file.db`` or a plain path selects the SQLite journal (the
default); ``postgresql://…`` the PostgreSQL journal. The engine only ever sees
the `Journal` contract, so a backend plugs in here without touching it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks.journal._base import Journal
from mcp_tasks.journal._sealing import NO_SEALING, Sealing

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_url(value: str) -> bool:
    """Whether ``value`` names a journal by URL rather than by file path."""
    return "://" in value


@asynccontextmanager
async def open_journal(
    location: str | Path,
    *,
    synchronous: str = "FULL",
    pool_size: int | None = None,
    listen_url: str | None = None,
    prepared_statements: bool = True,
    sealing: Sealing = NO_SEALING,
) -> AsyncGenerator[Journal]:
    """Open the journal at ``location`` (a path or a URL) for as long as the block runs.

    ``synchronous`` applies to SQLite; ``pool_size``, ``listen_url`` and
    ``prepared_statements`` to PostgreSQL (see `PostgresJournal.open`).
    ``sealing`` encrypts values at rest on either (`mcp_tasks.journal._sealing`).

    Raises:
        ConfigurationError: the URL names no backend this build knows, or
            ``sealing``'s keys cannot open the journal's sealed values.
        JournalError: the journal cannot be opened.
        JournalSchemaError: it was written by a newer mcp-tasks.
    """
    text = str(location)
    if isinstance(location, Path) or not is_url(text):
        path = Path(text)
    elif text.startswith(SQLITE_PREFIX):
        path = Path(text[len(SQLITE_PREFIX) - 1 :])
    elif text.startswith(POSTGRES_SCHEMES):
        postgres = _postgres_backend()
        options: dict[str, Any] = {
            "prepared_statements": prepared_statements,
            "sealing": sealing,
        }
        if pool_size is not None:
            options["pool_size"] = pool_size
        async with postgres.PostgresJournal.open(
            text, listen_url=listen_url, **options
        ) as journal:
            yield journal
        return
    else:
        scheme = text.split("://", 1)[0]
        raise ConfigurationError(
            "--db",
            f"unknown journal URL scheme {scheme!r} (use a path, sqlite:/// or postgresql://)",
        )
    from mcp_tasks.journal.sqlite import SqliteJournal

    async with SqliteJournal.open(
        path, synchronous=synchronous, sealing=sealing
    ) as journal:
        yield journal


def _postgres_backend() -> ModuleType:
    """The PostgreSQL backend, or one clear error if its driver is not installed."""
    try:
        from mcp_tasks.journal import postgres
    except ImportError as exc:
        raise ConfigurationError(
            "--db",
            "the PostgreSQL journal needs the psycopg driver, which is not "
            f"installed ({exc}): pip install 'mcp-tasks[postgres]'",
        ) from exc
    return postgres
