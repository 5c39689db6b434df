"""Shared fixtures: asyncio backend (aiosqlite is asyncio-only), hermetic env, PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Generator
from contextlib import ExitStack

import pytest

from .pg_server import (
    TEST_URL_VARIABLE,
    PostgresUnavailableError,
    fresh_database,
    postgres_server,
)

# Read before `_scrub_environment` removes every MCP_TASKS_* variable from the
# tests' view: the server to test against is the one setting that must reach
# the suite.
_POSTGRES_ENVIRON = {
    name: value for name, value in os.environ.items() if name == TEST_URL_VARIABLE
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _scrub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MCP_TASKS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres_url() -> Generator[str]:
    """A PostgreSQL server for the session (started only when a test asks).

    ``MCP_TASKS_TEST_POSTGRES_URL`` if set, otherwise a throwaway cluster that
    is removed at the end of the session. Fails, never skips, with one line
    saying what to install when neither is possible.
    """
    with ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server(_POSTGRES_ENVIRON))
        except PostgresUnavailableError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Generator[str]:
    """The URL of a fresh empty database of this test's own, dropped after it."""
    with fresh_database(postgres_url) as url:
        yield url
