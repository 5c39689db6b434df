"""The cost of per-client request limits: an admitted request with and without them.

In process, 8 clients each make requests back to back through
`TaskRuntime.admit_request` (what the server does before every task request),
interleaved, for three configurations in one run: no limit; the default
(100 requests/s per client, so every tenth request of a client takes a lease
of 10 from the journal); and a limit too high to bind (10,000/s: a lease of
1,000). Printed: microseconds per admitted request and journal writes per
request. Only requests that are admitted are timed: a refused one costs less.

    .venv/bin/python -m benchmarks.request_limits            # 5 trials
    .venv/bin/python -m benchmarks.request_limits --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from mcp_tasks import OwnerId, Requester, Settings, TaskRuntime

CLIENTS = 8
MODES: dict[str, float | None] = {"off": None, "100/s": 100.0, "10000/s": 10_000.0}


async def _trial(
    db: Path, per_second: float | None, per_client: int
) -> tuple[float, float]:
    settings = Settings(
        requests_per_second=per_second,
        request_delay_seconds=5.0,  # a burst beyond the rate waits, never fails
        synchronous="NORMAL",
        shutdown_grace_seconds=0.1,
    )
    requesters = [Requester(OwnerId(f"client-{n}")) for n in range(CLIENTS)]
    async with TaskRuntime.open(db, settings, {}) as runtime:
        before = runtime.statistics().journal_writes
        start = time.perf_counter()
        for _ in range(per_client):
            for requester in requesters:
                await runtime.admit_request(requester)
        elapsed = time.perf_counter() - start
        writes = runtime.statistics().journal_writes - before
    total = per_client * CLIENTS
    return elapsed / total, writes / total


async def main(trials: int, per_client: int) -> None:
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    writes: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mcpt-limits-") as folder:
        for trial in range(trials):
            for mode, rate in MODES.items():
                # At 100/s a client may not make more than its burst at once:
                # keep its share of the trial within that.
                count = min(per_client, 200) if rate == 100.0 else per_client
                db = Path(folder) / f"{trial}-{mode.replace('/', '-')}.db"
                per, wrote = await _trial(db, rate, count)
                seconds[mode].append(per)
                writes[mode] = wrote
    off = statistics.median(seconds["off"])
    print(f"{CLIENTS} clients, {trials} trials; microseconds per admitted request:")
    for mode in MODES:
        median = statistics.median(seconds[mode])
        print(
            f"  {mode:>8}: {median * 1e6:7.2f} us  (+{(median - off) * 1e6:6.2f})"
            f"   journal writes per request {writes[mode]:.3f}"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    anyio.run(main, *((2, 100) if args.quick else (5, 2000)))


if __name__ == "__main__":
    cli()
