"""Bringing a PostgreSQL database's schema up to date, safely from many processes.

The schema version is the ``schema_version`` row of ``meta`` (no ``meta``
table: an empty database, version 0). A database written by a newer
mcp-tasks is refused before anything is written. Migrations run in one
transaction that first takes a transaction-scoped advisory lock, so of several
processes starting at once one migrates and the others wait for it and then
find nothing left to do; the lock ends with the transaction, which also suits
a pooler in transaction mode.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

import psycopg

from mcp_tasks._exceptions import JournalSchemaError
from mcp_tasks.journal._sql import migrations

PACKAGE: Final = __name__.rpartition(".")[0]

#: The advisory lock key migrations hold ("mcptasks" in ASCII).
MIGRATION_LOCK: Final = 0x6D6370_7461736B


def supported_version() -> int:
    """The newest schema version this code knows."""
    return migrations(PACKAGE)[-1][0]


async def schema_version(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
    """The database's schema version (0: empty)."""
    # A scan of the catalog under this statement's snapshot, not `to_regclass`:
    # a name lookup may answer from this session's cache of "no such table"
    # made before another process's migration committed.
    cursor = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
        "WHERE schemaname = current_schema() AND tablename = 'meta')"
    )
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return 0
    cursor = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    row = await cursor.fetchone()
    return 0 if row is None else int(str(row[0]))


async def migrate(
    conn: psycopg.AsyncConnection[tuple[object, ...]], location: str
) -> None:
    """Refuse a newer schema, then apply every migration the database lacks.

    ``conn`` is in autocommit mode; the migrations run in one transaction.

    Raises:
        JournalSchemaError: the database was written by a newer mcp-tasks
            (nothing is written).
    """
    supported = supported_version()
    current = await schema_version(conn)
    if current > supported:
        raise JournalSchemaError(location, current, supported)
    if current == supported:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        # Re-read under the lock: another process may have migrated meanwhile.
        current = await schema_version(conn)
        if current > supported:
            raise JournalSchemaError(location, current, supported)
        for version, script in migrations(PACKAGE):
            if version > current:
                await conn.execute(script)
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(supported),),
        )


def redacted(url: str) -> str:
    """``url`` without its password (in the authority or the query), for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in pairs], safe="*/"
        )
    return SplitResult(parts.scheme, netloc, parts.path, query, "").geturl()
