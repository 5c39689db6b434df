"""What a single-row read costs through aiosqlite's thread against a direct read.

The journal reads through aiosqlite, whose every call hops to its thread and
back to the event loop. This measures the process CPU of one primary-key read
of a 200-byte row in a WAL database, ``--reads`` times each way: awaited
through aiosqlite, and as a plain ``sqlite3`` call on the event loop's thread
(what a synchronous single-row read in the journal would cost).

    python -m benchmarks.sqlite_thread_hop --reads 5000
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import aiosqlite

_QUERY = "SELECT id, value FROM rows WHERE id = ?"


async def _main(reads: int) -> None:
    with tempfile.TemporaryDirectory(prefix="thread-hop-") as folder:
        path = Path(folder) / "hop.db"
        setup = sqlite3.connect(path)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE rows (id TEXT PRIMARY KEY, value TEXT)")
        setup.executemany(
            "INSERT INTO rows VALUES (?, ?)", [(str(i), "x" * 200) for i in range(1000)]
        )
        setup.commit()
        setup.close()
        threaded = await aiosqlite.connect(path, isolation_level=None)
        direct = sqlite3.connect(path, isolation_level=None)
        try:
            for name in ("aiosqlite (thread hop)", "sqlite3 on the loop"):
                cpu, wall = time.process_time(), time.perf_counter()
                for i in range(reads):
                    key = (str(i % 1000),)
                    if name.startswith("aiosqlite"):
                        await threaded.execute_fetchall(_QUERY, key)
                    else:
                        direct.execute(_QUERY, key).fetchall()
                cpu_us = (time.process_time() - cpu) / reads * 1e6
                wall_us = (time.perf_counter() - wall) / reads * 1e6
                print(
                    f"{name:24} CPU {cpu_us:6.1f} µs/read, wall {wall_us:6.1f} µs/read"
                )
        finally:
            await threaded.close()
            direct.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.sqlite_thread_hop")
    parser.add_argument("--reads", type=int, default=5000)
    asyncio.run(_main(parser.parse_args().reads))


if __name__ == "__main__":
    main()
