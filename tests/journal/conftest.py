"""Journal fixtures: every backend, fresh databases, and two journals on one.

`backend` is the contract suite's parameter: each backend gives fresh
database locations and opens journals on them. Two journal objects opened on
one location behave like two processes sharing a database (separate
connections, separate writers), which is how the suite checks claim
exclusivity, cap exactness, fencing and the change feed across processes.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_tasks.journal import NO_SEALING, Journal, Sealing, open_journal
from tests.pg_server import create_database, drop_database, with_database


@dataclass(frozen=True)
class Backend:
    """How to make databases of one backend and open journals on them."""

    name: str
    new_database: Callable[[], str]

    def open(
        self, location: str, sealing: Sealing = NO_SEALING
    ) -> AbstractAsyncContextManager[Journal]:
        """A journal on ``location`` (a second call opens a second journal on it)."""
        return open_journal(location, sealing=sealing)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each journal backend in turn (PostgreSQL: fresh databases on the test server)."""
    counter = itertools.count()
    if request.param == "sqlite":
        yield Backend("sqlite", lambda: str(tmp_path / f"journal-{next(counter)}.db"))
        return
    if request.param == "postgres":
        server: str = request.getfixturevalue("postgres_url")
        made: list[str] = []

        def new_database() -> str:
            made.append(create_database(server))
            return with_database(server, made[-1])

        try:
            yield Backend("postgres", new_database)
        finally:
            for name in made:
                drop_database(server, name)
        return
    raise AssertionError(request.param)


@pytest.fixture
def database(backend: Backend) -> str:
    """A fresh, empty database of the backend."""
    return backend.new_database()


@pytest.fixture
async def journal(backend: Backend, database: str) -> AsyncIterator[Journal]:
    async with backend.open(database) as opened:
        yield opened


@pytest.fixture
async def other(
    backend: Backend, database: str, journal: Journal
) -> AsyncIterator[Journal]:
    """A second journal on the same database: another process, as far as it knows."""
    async with backend.open(database) as opened:
        yield opened
