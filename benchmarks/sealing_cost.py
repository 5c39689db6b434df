"""The cost of encryption at rest: the engine's tasks/s without and with a key, in one run.

Each trial runs the same work twice, alternating which goes first: no key
file, and ``[journal] encryption_key_file`` with one key (every argument,
request metadata, status message, change and result sealed with AES-256-GCM,
and opened again when the task is claimed and read). The work is the engine
figure's *with execution* shape (concurrent submitters through a
`TaskRuntime` on a SQLite journal, ``synchronous=FULL``, 8 workers, each task
submitted, claimed, run and completed, then its result read back), with the
``echo_text`` tool, for two payloads: **small** (a 10-character text) and
**10 KB** (arguments and result of 10,000 characters each). Printed: the
median tasks/s of each mode and key ÷ none per payload, and the CPU time of
sealing and opening one value of each size.

    .venv/bin/python -m benchmarks.sealing_cost            # 5 trials
    .venv/bin/python -m benchmarks.sealing_cost --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import anyio

from mcp_tasks._model import OwnerId, TaskId
from mcp_tasks.engine import Requester, TaskRuntime
from mcp_tasks.journal._sealing import Keyring, Sealing, add_key

from .fig_engine import _settings, _wait_drained, bench_specs

PAYLOADS = {"small": 10, "10 KB": 10_000}


async def _trial(
    db: Path, key_file: Path | None, size: int, submitters: int, per: int
) -> float:
    """Tasks/s: submitted, run, completed and their results read back."""
    settings = replace(_settings(8), encryption_key_file=key_file)
    text = "x" * size
    async with TaskRuntime.open(db, settings, bench_specs()) as runtime:

        async def submitter(index: int) -> None:
            requester = Requester(OwnerId(f"submitter-{index}"))
            for _ in range(per):
                await runtime.submit(requester, "echo_text", {"text": text})

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(submitters):
                tg.start_soon(submitter, index)
        await _wait_drained(runtime)
        rows = await runtime.journal.list_tasks(limit=submitters * per)
        for row in rows:
            task = await runtime.journal.get(TaskId(row.task.task_id), outcome=True)
            assert task is not None
            assert task.outcome is not None
            assert task.outcome.result is not None
            assert text in str(task.outcome.result)  # opened, as clients see it
        elapsed = time.perf_counter() - start
    return submitters * per / elapsed


def value_seconds(sealing: Sealing, size: int, rounds: int) -> float:
    """CPU seconds to seal and open one JSON value of ``size`` characters."""
    value = '{"text":"' + "x" * size + '"}'
    start = time.perf_counter()
    for _ in range(rounds):
        sealing.unseal(
            sealing.seal(value, "tasks.arguments", "t"), "tasks.arguments", "t"
        )
    return (time.perf_counter() - start) / rounds


async def main(trials: int, submitters: int, per: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mcpt-sealing-") as folder:
        key_file = Path(folder) / "keys"
        add_key(key_file)
        print(
            f"tasks: {submitters * per} per trial ({submitters} submitters), "
            f"{trials} trials, modes alternated"
        )
        for name, size in PAYLOADS.items():
            rates: dict[bool, list[float]] = {False: [], True: []}
            for trial in range(trials):
                order = (False, True) if trial % 2 == 0 else (True, False)
                for keyed in order:
                    db = Path(folder) / f"{size}-t{trial}-{keyed}.db"
                    rate = await _trial(
                        db, key_file if keyed else None, size, submitters, per
                    )
                    rates[keyed].append(rate)
            off, on = statistics.median(rates[False]), statistics.median(rates[True])
            print(
                f"{name:>6} no key: {off:8.0f} tasks/s   {[round(r) for r in rates[False]]}"
            )
            print(
                f"{name:>6} a key:  {on:8.0f} tasks/s   {[round(r) for r in rates[True]]}"
            )
            print(f"{name:>6} key / none: {on / off:.3f}")
        sealing = Sealing(Keyring.load(key_file))
        for name, size in PAYLOADS.items():
            seconds = value_seconds(sealing, size, 20_000)
            print(f"seal + open one {name} value: {seconds * 1e6:.1f} us")


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        anyio.run(main, 2, 16, 25)
    else:
        anyio.run(main, 5, 64, 50)


if __name__ == "__main__":
    cli()
