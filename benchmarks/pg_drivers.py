"""asyncpg or psycopg 3 for the PostgreSQL journal: the journal's operations, measured.

Run it with ``.venv/bin/python -m benchmarks.pg_drivers`` (``--quick`` for a smoke
run, ``--url`` to use an existing server instead of a throwaway cluster).

Each driver runs the operations the journal will run, through its own
connection pool, acquiring a connection per operation as the journal will:

- ``insert``: one ``INSERT`` committed on its own (autocommit), one at a time;
- ``batch64 executemany`` / ``copy`` / ``unnest``: 64 rows in one transaction,
  three ways;
- ``claim x8``: ``UPDATE … WHERE task_id = (SELECT … FOR UPDATE SKIP LOCKED
  LIMIT 1) RETURNING …`` from 8 connections at once;
- ``get``: ``SELECT`` of one row by primary key (the ``tasks/get`` path), and the
  same on a connection held outside the pool (the driver alone);
- ``txn``: UPDATE + INSERT + SELECT in one transaction (a journal's finish);
- ``notify``: LISTEN/NOTIFY wake-up latency, ``pg_notify`` committed on a pooled
  connection to a callback on a dedicated listening connection.

Configurations: asyncpg with its pool as shipped (it resets every connection
it takes back, one more round trip), asyncpg with that reset turned off (a
journal that never leaves session state behind can), and psycopg with
``psycopg-pool`` (binary build; it prepares a statement server-side after 5
executions). Trials interleave the configurations, so that the noise of a
shared 2-core machine falls on all of them alike; the table shows the median
and the range over the trials, and the ratios between configurations are the
result, not the absolute numbers.

Then behind a transaction-mode pooler (PgBouncer from the OS package, if it
can be found or installed): what each driver's prepared statements do there
with default settings and with the settings that make them work, and whether
LISTEN survives. Nothing here asserts: this prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString, Protocol, cast
from urllib.parse import urlsplit

import anyio
import asyncpg
import psycopg
import psycopg_pool
from psycopg import sql as pgsql

from .host import apt_install, free_port
from .pg_cluster import SERVER_USER, running_cluster

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


# ---------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many operations each measurement runs (after `warmup` untimed ones)."""

    trials: int
    warmup: int
    inserts: int
    batches: int
    claims_per_worker: int
    gets: int
    finishes: int
    notifies: int
    pooler_iterations: int


FULL = Sizes(
    trials=3,
    warmup=20,
    inserts=3000,
    batches=300,
    claims_per_worker=600,
    gets=8000,
    finishes=1000,
    notifies=1500,
    pooler_iterations=25,
)
QUICK = Sizes(
    trials=1,
    warmup=6,
    inserts=30,
    batches=4,
    claims_per_worker=8,
    gets=50,
    finishes=20,
    notifies=10,
    pooler_iterations=8,
)


@dataclass(slots=True)
class Sample:
    """One measurement: operations, wall and client CPU time, each latency."""

    ops: int
    seconds: float
    cpu_seconds: float
    latencies_ms: list[float] = field(default_factory=list[float])

    @property
    def rate(self) -> float:
        """Operations per second over the wall time."""
        return self.ops / self.seconds

    @property
    def cpu_us(self) -> float:
        """This process's CPU time per operation, in microseconds.

        Client and server share the machine's cores, so what the driver
        spends per operation is taken from the database too.
        """
        return self.cpu_seconds / self.ops * 1e6

    def percentile(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the latencies, in milliseconds."""
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rows(n: int) -> list[Row]:
    return [
        (secrets.token_urlsafe(16), f"owner-{i % 8}", json.dumps({"seconds": i % 30}))
        for i in range(n)
    ]


async def _timed(
    calls: Sequence[Callable[[], Awaitable[object]]], warmup: int
) -> Sample:
    """Run ``calls`` one after another; the first ``warmup`` are not timed."""
    for call in calls[:warmup]:
        await call()
    latencies: list[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    for call in calls[warmup:]:
        t0 = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - t0) * 1000)
    seconds = time.perf_counter() - start
    return Sample(len(latencies), seconds, time.process_time() - cpu, latencies)


async def _reset(driver: Driver, prefill: int = 0) -> None:
    await driver.execute("TRUNCATE bench_tasks RESTART IDENTITY")
    if prefill:
        await driver.execute(PREFILL, prefill)
    await driver.execute("VACUUM ANALYZE bench_tasks")


async def op_insert(driver: Driver, sizes: Sizes) -> Sample:
    await _reset(driver)
    rows = _rows(sizes.warmup + sizes.inserts)
    return await _timed([lambda r=r: driver.insert(r) for r in rows], sizes.warmup)


def _batch_op(
    method: Callable[[Driver], Callable[[Sequence[Row]], Awaitable[None]]],
) -> Callable[[Driver, Sizes], Awaitable[Sample]]:
    async def op(driver: Driver, sizes: Sizes) -> Sample:
        await _reset(driver)
        warm = max(2, sizes.warmup // 8)
        batches = [_rows(BATCH) for _ in range(warm + sizes.batches)]
        insert = method(driver)
        return await _timed([lambda b=b: insert(b) for b in batches], warm)

    return op


async def op_claim(driver: Driver, sizes: Sizes) -> Sample:
    """8 workers claim until each has done its share; latency per claim."""
    per = sizes.claims_per_worker
    await _reset(driver, prefill=CLAIMERS * (per + sizes.warmup) + CLAIMERS)
    for _ in range(sizes.warmup):
        await driver.claim("warmup")
    latencies: list[float] = []
    claimed = 0

    async def worker(name: str) -> None:
        nonlocal claimed
        for _ in range(per):
            t0 = time.perf_counter()
            got = await driver.claim(name)
            latencies.append((time.perf_counter() - t0) * 1000)
            claimed += got

    cpu = time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(CLAIMERS):
            tg.start_soon(worker, f"worker-{i}")
    seconds = time.perf_counter() - start
    assert claimed == CLAIMERS * per, f"{driver.name}: claimed {claimed}"
    return Sample(claimed, seconds, time.process_time() - cpu, latencies)


async def op_get(driver: Driver, sizes: Sizes) -> Sample:
    await _reset(driver, prefill=sizes.gets)
    ids = [
        f"pre-{1 + (i * 7919) % sizes.gets}" for i in range(sizes.warmup + sizes.gets)
    ]
    return await _timed([lambda t=t: driver.get(t) for t in ids], sizes.warmup)


async def op_get_held(driver: Driver, sizes: Sizes) -> Sample:
    await _reset(driver, prefill=sizes.gets)
    ids = [
        f"pre-{1 + (i * 7919) % sizes.gets}" for i in range(sizes.warmup + sizes.gets)
    ]
    return await _timed([lambda t=t: driver.get_held(t) for t in ids], sizes.warmup)


async def op_finish(driver: Driver, sizes: Sizes) -> Sample:
    """Three statements in one transaction, as a journal's finish might be."""
    await _reset(driver, prefill=sizes.warmup + sizes.finishes)
    await driver.execute("TRUNCATE bench_events")
    ids = [f"pre-{i}" for i in range(1, sizes.warmup + sizes.finishes + 1)]
    return await _timed([lambda t=t: driver.finish(t) for t in ids], sizes.warmup)


async def op_notify(driver: Driver, sizes: Sizes) -> Sample:
    """From the sender's ``pg_notify`` call to the listener's callback."""
    woken = anyio.Event()

    def on_notify() -> None:
        woken.set()

    async def ping() -> None:
        nonlocal woken
        woken = anyio.Event()
        await driver.notify("ping")
        with anyio.fail_after(10):
            await woken.wait()

    async with driver.listen(on_notify):
        return await _timed([ping] * (sizes.warmup + sizes.notifies), sizes.warmup)


OPERATIONS: dict[str, Callable[[Driver, Sizes], Awaitable[Sample]]] = {
    "insert (1 row, autocommit)": op_insert,
    "batch of 64: executemany": _batch_op(lambda d: d.insert_executemany),
    "batch of 64: COPY": _batch_op(lambda d: d.insert_copy),
    "batch of 64: unnest": _batch_op(lambda d: d.insert_unnest),
    "claim SKIP LOCKED x8 conns": op_claim,
    "get by PK (pool)": op_get,
    "get by PK (held conn)": op_get_held,
    "txn: update + insert + select": op_finish,
    "NOTIFY -> LISTEN wake-up": op_notify,
}


# ---------------------------------------------------------------------- table


def _fmt(values: Sequence[float], digits: int) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"


#: The metrics in the printed tables: (heading, digits, value of one sample).
METRICS: tuple[tuple[str, int, Callable[[Sample], float]], ...] = (
    ("ops/s", 0, lambda s: s.rate),
    ("p50 ms", 2, lambda s: s.percentile(0.5)),
    ("p99 ms", 2, lambda s: s.percentile(0.99)),
    ("client CPU µs/op", 0, lambda s: s.cpu_us),
)


def render(results: dict[str, dict[str, list[Sample]]], configs: Sequence[str]) -> str:
    """One Markdown table per metric: median [range] per configuration.

    The last configuration is compared with each of the others: the median
    over trials of the ratio within a trial (the configurations of one trial
    ran back to back, so a slow minute of the machine cancels out), so that
    the table reads "psycopg / asyncpg".
    """
    tables: list[str] = []
    last, others = configs[-1], configs[:-1]
    for heading, digits, value in METRICS:
        ratios = [f"{last} / {other}" for other in others]
        lines = [
            f"| {heading} | {' | '.join([*configs, *ratios])} |",
            "|---|" + "---|" * (len(configs) + len(ratios)),
        ]
        for op, per_config in results.items():
            cells = [_fmt([value(s) for s in per_config[c]], digits) for c in configs]
            for other in others:
                pairs = zip(per_config[last], per_config[other], strict=True)
                ratio = statistics.median(value(a) / value(b) for a, b in pairs)
                cells.append(f"{ratio:.2f}")
            lines.append(f"| {op} | {' | '.join(cells)} |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


async def _open_drivers(url: str) -> list[Driver]:
    return [
        await AsyncpgDriver.open(url, reset=True, size=CLAIMERS),
        await AsyncpgDriver.open(url, reset=False, size=CLAIMERS),
        await PsycopgDriver.open(url, size=CLAIMERS),
    ]


async def measure(url: str, sizes: Sizes) -> str:
    """Run every operation for every configuration, trials interleaved."""
    drivers = await _open_drivers(url)
    try:
        await drivers[0].execute(SCHEMA)
        results: dict[str, dict[str, list[Sample]]] = {
            op: {d.name: [] for d in drivers} for op in OPERATIONS
        }
        for trial in range(sizes.trials):
            print(f"trial {trial + 1}/{sizes.trials}", file=sys.stderr)
            # Rotate who goes first, so that no configuration always runs
            # right after the same neighbour (autovacuum, checkpoints).
            order = drivers[trial % len(drivers) :] + drivers[: trial % len(drivers)]
            for op, run in OPERATIONS.items():
                for driver in order:
                    results[op][driver.name].append(await run(driver, sizes))
        return render(results, [d.name for d in drivers])
    finally:
        for driver in drivers:
            await driver.aclose()


# --------------------------------------------------------------------- pooler


#: PgBouncer in transaction mode with fewer server connections than clients,
#: so that consecutive transactions of one client land on different servers.
PGBOUNCER_INI = """\
[databases]
postgres = host=127.0.0.1 port={server_port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {folder}/pgbouncer.log
"""
#: Client connections taking part in the pooler runs.
POOLER_CLIENTS = 4


def find_pgbouncer(*, install: bool) -> Path | None:
    """PgBouncer from ``PATH`` or ``/usr/sbin``; installed from the OS if allowed."""
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and Path(candidate).exists():
            return Path(candidate)

    if install and apt_install("pgbouncer"):
        return find_pgbouncer(install=False)
    return None


@contextlib.contextmanager
def pgbouncer(binary: Path, server_port: int, dbname: str) -> Generator[int]:
    """Run PgBouncer in front of ``127.0.0.1:server_port``; yield its port."""
    as_root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="mcp-tasks-pgbouncer-", dir="/tmp"))
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n', encoding="utf-8")
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        PGBOUNCER_INI.format(
            server_port=server_port, dbname=dbname, port=port, folder=folder
        ),
        encoding="utf-8",
    )
    if as_root:
        # PgBouncer refuses to run as root, like PostgreSQL.
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, user=SERVER_USER)
    process = subprocess.Popen(
        [str(binary), str(ini)],
        user=SERVER_USER if as_root else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), 0.2),
        ):
            return
        time.sleep(0.05)  # a readiness poll of another process, bounded above
    raise RuntimeError("pgbouncer did not listen within 15 s")


@dataclass(slots=True)
class PoolerRun:
    """What one driver configuration did behind the pooler."""

    name: str
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    get_ms: list[float] = field(default_factory=list[float])

    def row(self) -> str:
        """One Markdown table row."""
        p50 = f"{statistics.median(self.get_ms):.2f}" if self.get_ms else "–"
        error = self.first_error.replace("|", "/") or "–"
        return f"| {self.name} | {self.ok} | {self.errors} | {p50} | {error} |"


async def _pooled(driver: Driver, iterations: int) -> PoolerRun:
    """`POOLER_CLIENTS` clients doing get + claim; count what fails and how."""
    run = PoolerRun(driver.name)

    async def client(index: int) -> None:
        for i in range(iterations):
            for step in ("get", "claim"):
                try:
                    t0 = time.perf_counter()
                    if step == "get":
                        await driver.get(f"pre-{1 + (index * iterations + i) % 100}")
                        run.get_ms.append((time.perf_counter() - t0) * 1000)
                    else:
                        await driver.claim(f"client-{index}")
                    run.ok += 1
                except Exception as exc:  # the point is to see what breaks
                    run.errors += 1
                    run.first_error = run.first_error or _one_line(exc)

    async with anyio.create_task_group() as tg:
        for index in range(POOLER_CLIENTS):
            tg.start_soon(client, index)
    if run.errors:
        run.get_ms.clear()  # a latency of failing calls means nothing
    return run


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}: {text[:110]}"


async def _listen_survives(driver: Driver, direct: Driver) -> str:
    """LISTEN through ``driver``; NOTIFY directly; delivered within 2 s?"""
    woken = anyio.Event()
    try:
        async with driver.listen(woken.set):
            await direct.notify("through the pooler?")
            with anyio.move_on_after(2):
                await woken.wait()
    except Exception as exc:
        return f"LISTEN failed: {_one_line(exc)}"
    return "delivered" if woken.is_set() else "not delivered within 2 s"


async def pooler_section(
    url: str, server_port: int, sizes: Sizes, install: bool
) -> str:
    """Each driver behind PgBouncer (transaction mode): defaults vs configured."""
    binary = find_pgbouncer(install=install)
    if binary is None:
        return (
            "PgBouncer not found (apt-get install pgbouncer): pooler section skipped."
        )

    dbname = url.rsplit("/", 1)[-1].split("?")[0] or "postgres"
    with pgbouncer(binary, server_port, dbname) as port:
        pooled = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        direct = await AsyncpgDriver.open(url, reset=True, size=1)
        await _reset(direct, prefill=2000)
        size = POOLER_CLIENTS
        configs: list[Callable[[], Awaitable[Driver]]] = [
            lambda: AsyncpgDriver.open(
                pooled, reset=True, size=size, name="asyncpg, defaults"
            ),
            lambda: AsyncpgDriver.open(
                pooled,
                reset=True,
                size=size,
                statement_cache_size=0,
                name="asyncpg, statement_cache_size=0",
            ),
            lambda: PsycopgDriver.open(
                pooled, size=size, name="psycopg, defaults (prepare_threshold=5)"
            ),
            lambda: PsycopgDriver.open(
                pooled,
                size=size,
                prepare_threshold=None,
                name="psycopg, prepare_threshold=None",
            ),
        ]
        lines = [
            f"PgBouncer {_pgbouncer_version(binary)}, pool_mode=transaction, "
            f"default_pool_size=2, {POOLER_CLIENTS} clients x {sizes.pooler_iterations} x (get + claim)",
            "",
            "| configuration | ok | errors | get p50 ms | first error |",
            "|---|---|---|---|---|",
        ]
        listen: list[str] = []
        try:
            for make in configs:
                driver = await make()
                try:
                    lines.append((await _pooled(driver, sizes.pooler_iterations)).row())
                    if "defaults" in driver.name:
                        listen.append(
                            f"- LISTEN via the pooler, {driver.name.split(',')[0]}: "
                            + await _listen_survives(driver, direct)
                        )
                finally:
                    await driver.aclose()
        finally:
            await direct.aclose()
    return "\n".join([*lines, "", *listen])


def _pgbouncer_version(binary: Path) -> str:
    done = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.split("\n", 1)[0].removeprefix("PgBouncer ").strip()


# ----------------------------------------------------------------------- main


def _versions(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        server = row[0] if row else "?"
    return (
        f"PostgreSQL {server}; asyncpg {asyncpg.__version__}; psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__}); psycopg-pool {_pool_version()}; Python "
        f"{sys.version.split()[0]}; {os.cpu_count()} CPUs"
    )


def _pool_version() -> str:
    from importlib.metadata import version

    return version("psycopg-pool")


async def _run(
    url: str, server_port: int | None, sizes: Sizes, pooler: bool, install: bool
) -> str:
    parts = [_versions(url), "", await measure(url, sizes)]
    if pooler and server_port is not None:
        parts += ["", await pooler_section(url, server_port, sizes, install)]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both drivers against a throwaway cluster (or ``--url``); print tables."""
    parser = argparse.ArgumentParser(prog="benchmarks.pg_drivers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one trial")
    parser.add_argument(
        "--url", help="an existing server (default: a throwaway cluster)"
    )
    parser.add_argument(
        "--no-pooler", action="store_true", help="skip the PgBouncer part"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    pooler = not args.no_pooler
    # The quick (CI) run never installs anything; a full run may install PgBouncer.
    install = not args.quick
    if args.url:
        port: int = urlsplit(str(args.url)).port or 5432
        print(anyio.run(_run, args.url, port, sizes, pooler, install))
        return 0

    with running_cluster() as cluster:
        assert cluster.port is not None
        print(anyio.run(_run, cluster.url(), cluster.port, sizes, pooler, install))
    return 0


if __name__ == "__main__":
    sys.exit(main())
