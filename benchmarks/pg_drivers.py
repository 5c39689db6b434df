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
shared 2-core machine falls on all of them alike; the tables show the median
and the range over the trials of the rate, p50, p99 and this process's CPU
per operation, and the ratios between configurations are the result, not the
absolute numbers.

Then behind a transaction-mode pooler (`benchmarks._pg_pooler`): what each
driver's prepared statements do there with default settings and with the
setting that makes them work, and whether LISTEN survives. The drivers
themselves are in `benchmarks._pg_clients`. This prints figures and never
asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import asyncpg
import psycopg

from ._pg_clients import (
    BATCH,
    CLAIMERS,
    SCHEMA,
    AsyncpgDriver,
    Driver,
    PsycopgDriver,
    Row,
    reset_table,
)
from ._pg_pooler import pooler_section
from .pg_cluster import running_cluster

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


async def op_insert(driver: Driver, sizes: Sizes) -> Sample:
    await reset_table(driver)
    rows = _rows(sizes.warmup + sizes.inserts)
    return await _timed([lambda r=r: driver.insert(r) for r in rows], sizes.warmup)


def _batch_op(
    method: Callable[[Driver], Callable[[Sequence[Row]], Awaitable[None]]],
) -> Callable[[Driver, Sizes], Awaitable[Sample]]:
    async def op(driver: Driver, sizes: Sizes) -> Sample:
        await reset_table(driver)
        warm = max(2, sizes.warmup // 8)
        batches = [_rows(BATCH) for _ in range(warm + sizes.batches)]
        insert = method(driver)
        return await _timed([lambda b=b: insert(b) for b in batches], warm)

    return op


async def op_claim(driver: Driver, sizes: Sizes) -> Sample:
    """8 workers claim until each has done its share; latency per claim."""
    per = sizes.claims_per_worker
    await reset_table(driver, prefill=CLAIMERS * (per + sizes.warmup) + CLAIMERS)
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
    await reset_table(driver, prefill=sizes.gets)
    ids = [
        f"pre-{1 + (i * 7919) % sizes.gets}" for i in range(sizes.warmup + sizes.gets)
    ]
    return await _timed([lambda t=t: driver.get(t) for t in ids], sizes.warmup)


async def op_get_held(driver: Driver, sizes: Sizes) -> Sample:
    await reset_table(driver, prefill=sizes.gets)
    ids = [
        f"pre-{1 + (i * 7919) % sizes.gets}" for i in range(sizes.warmup + sizes.gets)
    ]
    return await _timed([lambda t=t: driver.get_held(t) for t in ids], sizes.warmup)


async def op_finish(driver: Driver, sizes: Sizes) -> Sample:
    """Three statements in one transaction, as a journal's finish might be."""
    await reset_table(driver, prefill=sizes.warmup + sizes.finishes)
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
        parts += [
            "",
            await pooler_section(url, server_port, sizes.pooler_iterations, install),
        ]
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
