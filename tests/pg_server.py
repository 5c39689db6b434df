"""A real PostgreSQL server for the test suite, and a fresh database per test.

The server comes from ``MCP_TASKS_TEST_POSTGRES_URL`` when it is set (any
database on it will do: the tests only create and drop their own), otherwise
from a throwaway cluster that `benchmarks.pg_cluster` starts from the
machine's PostgreSQL binaries (installing them with apt-get when we are root)
and removes at the end of the session. No PostgreSQL test is ever skipped: a
machine that can provide neither fails them with one line saying what to
install.

Each test that asks for a database gets ``test_<random>``, created from
``template0`` (which nobody can connect to, so the copy never waits for
another session to leave it) and dropped afterwards with ``WITH (FORCE)``,
which also ends any connection the test left open.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator, Mapping
from contextlib import contextmanager

import psycopg
from psycopg import sql

from benchmarks.pg_cluster import (
    TEST_URL_VARIABLE,
    PostgresUnavailableError,
    running_cluster,
    with_database,
)

#: Bound on connecting to the server, in seconds.
CONNECT_TIMEOUT_SECONDS = 10


@contextmanager
def postgres_server(environ: Mapping[str, str] | None = None) -> Generator[str]:
    """Yield the URL of a PostgreSQL server for this test session.

    Args:
        environ: Where to look for ``MCP_TASKS_TEST_POSTGRES_URL`` (default:
            the process environment).

    Raises:
        PostgresUnavailableError: No URL given and no cluster can be started.
    """
    given = (os.environ if environ is None else environ).get(TEST_URL_VARIABLE)
    if given:
        with_database(given, "postgres")  # a clear error for a malformed URL
        yield given
        return

    with running_cluster() as cluster:
        yield cluster.url()


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    return psycopg.connect(
        url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    )


def create_database(server_url: str) -> str:
    """Create an empty database ``test_<random>``; return its name."""
    name = f"test_{secrets.token_hex(8)}"
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    return name


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, ending any session still connected to it."""
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


@contextmanager
def fresh_database(server_url: str) -> Generator[str]:
    """Yield the URL of a new empty database; drop it afterwards."""
    name = create_database(server_url)
    try:
        yield with_database(server_url, name)
    finally:
        drop_database(server_url, name)


__all__ = [
    "TEST_URL_VARIABLE",
    "PostgresUnavailableError",
    "create_database",
    "drop_database",
    "fresh_database",
    "postgres_server",
    "with_database",
]
