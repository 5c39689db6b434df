"""The two PostgreSQL drivers behind one interface, for `benchmarks.pg_drivers`.

The journal-like schema, its statements (written once, in asyncpg's ``$n``
style, converted for psycopg), and `Driver`: one configuration of one driver
doing the journal's operations through its own pool. Imports nothing from
``mcp_tasks``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, LiteralString, Protocol, cast

import anyio
import asyncpg
import psycopg
import psycopg_pool
from psycopg import sql as pgsql

#: The journal-like table the operations run on.
SCHEMA: LiteralString = """
DROP TABLE IF EXISTS bench_tasks;
CREATE TABLE bench_tasks (
    task_id    text PRIMARY KEY,
    seq        bigserial NOT NULL,
    owner_id   text NOT NULL,
    status     text NOT NULL,
    params     jsonb NOT NULL,
    claimed_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bench_tasks_queued ON bench_tasks (seq) WHERE status = 'queued';
DROP TABLE IF EXISTS bench_events;
CREATE TABLE bench_events (
    seq     bigserial PRIMARY KEY,
    task_id text NOT NULL,
    kind    text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
"""
PREFILL: LiteralString = """
INSERT INTO bench_tasks (task_id, owner_id, status, params)
SELECT 'pre-' || g, 'owner-' || mod(g, 8), 'queued', '{"seconds": 1}'::jsonb
FROM generate_series(1, $1) AS g
"""
INSERT: LiteralString = """
INSERT INTO bench_tasks (task_id, owner_id, status, params)
VALUES ($1, $2, 'queued', $3::jsonb)
"""
INSERT_UNNEST: LiteralString = """
INSERT INTO bench_tasks (task_id, owner_id, status, params)
SELECT t, o, 'queued', p::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS u(t, o, p)
"""
CLAIM: LiteralString = """
UPDATE bench_tasks SET status = 'working', claimed_by = $1
WHERE task_id = (
    SELECT task_id FROM bench_tasks WHERE status = 'queued'
    ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING task_id, owner_id, params
"""
GET: LiteralString = """
SELECT task_id, owner_id, status, params, claimed_by, created_at
FROM bench_tasks WHERE task_id = $1
"""
NOTIFY: LiteralString = "SELECT pg_notify('bench_wake', $1)"
#: A finish as the journal might write it: the row, an event, then read back.
FINISH: LiteralString = """
UPDATE bench_tasks SET status = 'completed'
WHERE task_id = $1 AND status IN ('queued', 'working')
"""
EVENT: LiteralString = (
    "INSERT INTO bench_events (task_id, kind) VALUES ($1, 'completed')"
)
CHANNEL = "bench_wake"
COPY_COLUMNS = ("task_id", "owner_id", "status", "params")
BATCH = 64
CLAIMERS = 8

Row = tuple[str, str, str]
"""``(task_id, owner_id, params as JSON text)``."""


def _psycopg_sql(query: LiteralString) -> LiteralString:
    """``$1, $2, …`` (asyncpg) to ``%s`` (psycopg); each placeholder once, in order."""
    numbers = [int(n) for n in re.findall(r"\$(\d+)", query)]
    assert numbers == list(range(1, len(numbers) + 1)), query
    return cast("LiteralString", re.sub(r"\$\d+", "%s", query))


# ------------------------------------------------------------------- drivers


class Driver(Protocol):
    """One configuration of one driver, doing the journal's operations."""

    name: str

    async def execute(self, query: LiteralString, *args: object) -> None: ...
    async def insert(self, row: Row) -> None: ...
    async def insert_executemany(self, rows: Sequence[Row]) -> None: ...
    async def insert_copy(self, rows: Sequence[Row]) -> None: ...
    async def insert_unnest(self, rows: Sequence[Row]) -> None: ...
    async def claim(self, worker: str) -> bool: ...
    async def get(self, task_id: str) -> bool: ...
    async def get_held(self, task_id: str) -> bool: ...
    async def finish(self, task_id: str) -> bool: ...
    async def notify(self, payload: str) -> None: ...
    def listen(
        self, on_notify: Callable[[], None]
    ) -> contextlib.AbstractAsyncContextManager[None]: ...
    async def aclose(self) -> None: ...


async def _no_reset(connection: asyncpg.Connection) -> None:
    """asyncpg pool ``reset=``: keep the connection as it is (no round trip)."""
    del connection


class AsyncpgDriver:
    """asyncpg 0.x with `asyncpg.Pool`."""

    def __init__(
        self, name: str, pool: asyncpg.Pool, held: asyncpg.Connection, url: str
    ) -> None:
        self.name = name
        self._pool = pool
        self._held = held
        self._url = url

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        reset: bool,
        size: int,
        statement_cache_size: int = 100,
        name: str | None = None,
    ) -> AsyncpgDriver:
        """A pool of ``size`` connections plus one held connection."""
        pool = await asyncpg.create_pool(
            url,
            min_size=size,
            max_size=size,
            reset=None if reset else _no_reset,
            statement_cache_size=statement_cache_size,
        )
        held = await asyncpg.connect(url, statement_cache_size=statement_cache_size)
        if name is None:
            name = "asyncpg" if reset else "asyncpg reset=off"
        return cls(name, pool, held, url)

    async def execute(self, query: LiteralString, *args: object) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(query, *args)

    async def insert(self, row: Row) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(INSERT, *row)

    async def insert_executemany(self, rows: Sequence[Row]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(INSERT, rows)

    async def insert_copy(self, rows: Sequence[Row]) -> None:
        records = [(t, o, "queued", p) for t, o, p in rows]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "bench_tasks", records=records, columns=COPY_COLUMNS
            )

    async def insert_unnest(self, rows: Sequence[Row]) -> None:
        ids, owners, params = (list(c) for c in zip(*rows, strict=True))
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(INSERT_UNNEST, ids, owners, params)

    async def claim(self, worker: str) -> bool:
        async with self._pool.acquire() as conn:
            return await conn.fetchrow(CLAIM, worker) is not None

    async def get(self, task_id: str) -> bool:
        async with self._pool.acquire() as conn:
            return await conn.fetchrow(GET, task_id) is not None

    async def get_held(self, task_id: str) -> bool:
        return await self._held.fetchrow(GET, task_id) is not None

    async def finish(self, task_id: str) -> bool:
        # BEGIN, three statements, COMMIT: five round trips.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(FINISH, task_id)
            await conn.execute(EVENT, task_id)
            return await conn.fetchrow(GET, task_id) is not None

    async def notify(self, payload: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(NOTIFY, payload)

    @contextlib.asynccontextmanager
    async def listen(self, on_notify: Callable[[], None]) -> AsyncGenerator[None]:
        listener = await asyncpg.connect(self._url)

        def callback(*_: object) -> None:
            on_notify()

        try:
            await listener.add_listener(CHANNEL, callback)
            yield
        finally:
            await listener.close()

    async def aclose(self) -> None:
        await self._held.close()
        await self._pool.close()


class PsycopgDriver:
    """psycopg 3 (binary) with `psycopg_pool.AsyncConnectionPool`, autocommit."""

    def __init__(
        self,
        name: str,
        pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        held: psycopg.AsyncConnection[Any],
        url: str,
    ) -> None:
        self.name = name
        self._pool = pool
        self._held = held
        self._url = url
        self._insert: LiteralString = _psycopg_sql(INSERT)
        self._unnest: LiteralString = _psycopg_sql(INSERT_UNNEST)
        self._claim: LiteralString = _psycopg_sql(CLAIM)
        self._get: LiteralString = _psycopg_sql(GET)
        self._notify: LiteralString = _psycopg_sql(NOTIFY)
        self._finish: LiteralString = _psycopg_sql(FINISH)
        self._event: LiteralString = _psycopg_sql(EVENT)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        size: int,
        prepare_threshold: int | None = 5,
        name: str = "psycopg",
    ) -> PsycopgDriver:
        """A pool of ``size`` connections plus one held connection."""
        options: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": prepare_threshold,
        }
        pool = psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]](
            url, min_size=size, max_size=size, kwargs=options, open=False
        )
        await pool.open(wait=True)
        held = await psycopg.AsyncConnection.connect(url, **options)
        return cls(name, pool, held, url)

    async def execute(self, query: LiteralString, *args: object) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(_psycopg_sql(query), args)

    async def insert(self, row: Row) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(self._insert, row)

    async def insert_executemany(self, rows: Sequence[Row]) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.cursor().executemany(self._insert, rows)

    async def insert_copy(self, rows: Sequence[Row]) -> None:
        query = pgsql.SQL("COPY bench_tasks ({}) FROM STDIN").format(
            pgsql.SQL(", ").join(pgsql.Identifier(c) for c in COPY_COLUMNS)
        )
        async with self._pool.connection() as conn, conn.transaction():
            async with conn.cursor().copy(query) as copy:
                for t, o, p in rows:
                    await copy.write_row((t, o, "queued", p))

    async def insert_unnest(self, rows: Sequence[Row]) -> None:
        ids, owners, params = (list(c) for c in zip(*rows, strict=True))
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(self._unnest, (ids, owners, params))

    async def claim(self, worker: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self._claim, (worker,))
            return await cursor.fetchone() is not None

    async def get(self, task_id: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self._get, (task_id,))
            return await cursor.fetchone() is not None

    async def get_held(self, task_id: str) -> bool:
        cursor = await self._held.execute(self._get, (task_id,))
        return await cursor.fetchone() is not None

    async def finish(self, task_id: str) -> bool:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(self._finish, (task_id,))
            await conn.execute(self._event, (task_id,))
            cursor = await conn.execute(self._get, (task_id,))
            return await cursor.fetchone() is not None

    async def notify(self, payload: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(self._notify, (payload,))

    @contextlib.asynccontextmanager
    async def listen(self, on_notify: Callable[[], None]) -> AsyncGenerator[None]:
        listener = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        try:
            await listener.execute(
                pgsql.SQL("LISTEN {}").format(pgsql.Identifier(CHANNEL))
            )
            async with anyio.create_task_group() as tg:

                async def pump() -> None:
                    async for _ in listener.notifies():
                        on_notify()

                tg.start_soon(pump)
                yield
                tg.cancel_scope.cancel()
        finally:
            await listener.close()

    async def aclose(self) -> None:
        await self._held.close()
        await self._pool.close()


async def reset_table(driver: Driver, prefill: int = 0) -> None:
    """Empty the tables; insert ``prefill`` queued rows ``pre-1``, ``pre-2``, …"""
    await driver.execute("TRUNCATE bench_tasks, bench_events RESTART IDENTITY")
    if prefill:
        await driver.execute(PREFILL, prefill)
    await driver.execute("VACUUM ANALYZE bench_tasks")
