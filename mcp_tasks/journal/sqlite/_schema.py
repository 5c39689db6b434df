"""Opening a SQLite journal file: checks, pragmas and migrations.

Several processes may open one file at once, also for the first time, so a
migration re-reads the schema version inside its write transaction and applies
only what no other process applied meanwhile. A database written by a newer
mcp-tasks is refused before anything can rewrite its header.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mcp_tasks._exceptions import JournalError, JournalSchemaError
from mcp_tasks.journal._sql import migrations
from mcp_tasks.journal.sqlite._turnstile import Turnstile

PACKAGE: Final = __name__.rpartition(".")[0]
#: How long a writer waits for another process's write transaction to end.
BUSY_TIMEOUT_SECONDS: Final = 30.0
#: The WAL is truncated back to this size after a checkpoint (it otherwise
#: stays at its high-water mark, for example after one very large result).
WAL_SIZE_LIMIT_BYTES: Final = 64 * 1024 * 1024


def check_location(path: Path) -> None:
    """Refuse paths that cannot hold a database, before any driver thread starts."""
    if path.is_dir():
        raise JournalError(f"{path} is a folder, not a database file")
    if not path.parent.is_dir():
        raise JournalError(f"{path}: the folder {path.parent} does not exist")


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a path named when the journal opened it (device and inode)."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        """The identity of the file at ``path`` now, or None if there is none."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return cls(stat.st_dev, stat.st_ino)


def open_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    """The writer's connection, with the schema brought up to date (blocking).

    Processes opening one journal at once take turns through its turnstile:
    switching a fresh file to WAL needs an exclusive lock, and SQLite answers
    a connection that asks for it while another reads "database is locked"
    at once, without waiting out the busy timeout.
    """
    if _has_content(path):
        # Created already: no WAL switch left to race (and a file we refuse,
        # corrupt or newer, must be left exactly as it is, no sidecar beside).
        return _open_writer(path, synchronous)
    turn = Turnstile(path)
    try:
        turn.open()
    except OSError:
        return _open_writer(path, synchronous)  # takes turns through SQLite alone
    try:
        turn.enter()
        return _open_writer(path, synchronous)
    finally:
        turn.leave()
        turn.close()


def _has_content(path: Path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _open_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(
        path,
        isolation_level=None,
        timeout=BUSY_TIMEOUT_SECONDS,
        check_same_thread=False,
    )
    try:
        # Refuse a newer database before any PRAGMA below can rewrite its header.
        check_version(db, path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        db.execute("PRAGMA foreign_keys=ON")
        migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def check_version(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of ``db``; refuse one newer than this code knows."""
    ((current,),) = db.execute("PRAGMA user_version").fetchall()
    supported = migrations(PACKAGE)[-1][0]
    if current > supported:
        raise JournalSchemaError(str(path), current, supported)
    return int(current)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply every migration the database lacks, one write transaction each."""
    for version, script in migrations(PACKAGE):
        db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated
            # since we last looked.
            current = check_version(db, path)
            if version > current:
                for statement in statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def statements(script: str) -> list[str]:
    """The statements of a SQL script, split where SQLite says one is complete.

    `sqlite3.Connection.executescript` would commit the open transaction
    first, so a migration runs statement by statement instead; splitting with
    `sqlite3.complete_statement` keeps trigger bodies (which contain ``;``) whole.
    """
    found: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if not all(
                part.strip().startswith("--") or not part.strip()
                for part in statement.splitlines()
            ):
                found.append(statement)
            pending = ""
    if pending.strip() and not all(
        part.strip().startswith("--") or not part.strip()
        for part in pending.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at the end: {pending[:80]!r}")
    return found
