"""The cost of tracing: the engine's tasks/s with tracing off and on, in one run.

Each trial runs the engine figure's *with execution* variant (64 submitters,
no-op tasks, 8 workers, ``synchronous=FULL``; `fig_engine.engine_submits`)
twice, alternating which goes first: tracing **off** (no tracer provider, as
a server without ``[tracing]``) and tracing **on** (the OpenTelemetry SDK,
every trace sampled, a create span per submit and a process span per run,
batched to an exporter that drops them: the cost of recording, not of a
collector's network). Printed: the median tasks/s of each mode and on ÷ off.
Also measured: the per-task cost of the tracing hooks with tracing off (one
create context and one run trace), against the engine's time per task.

    .venv/bin/python -m benchmarks.tracing_cost            # 5 trials
    .venv/bin/python -m benchmarks.tracing_cost --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.util._once import Once

from mcp_tasks._model import OwnerId, TaskId
from mcp_tasks.engine._tracing import RunTrace, creating, tracing_on
from mcp_tasks.journal import Claimed, Lease

from .fig_engine import engine_submits


class Discard(SpanExporter):
    """Accepts every span and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _forget_provider() -> None:
    # OpenTelemetry sets a process's provider once; the trials switch it off
    # again between modes, as its own test utilities do.
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # pyright: ignore[reportPrivateUsage]
    trace._TRACER_PROVIDER = None  # pyright: ignore[reportPrivateUsage]


async def _trial(db: Path, on: bool, submitters: int, per: int) -> tuple[float, int]:
    exporter = Discard()
    provider: TracerProvider | None = None
    if on:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    try:
        figures = await engine_submits(db, submitters, per, execute=True)
    finally:
        if provider is not None:
            provider.shutdown()
        _forget_provider()
    return figures["completed_per_s"], exporter.spans


def hooks_off_seconds(rounds: int) -> float:
    """Seconds per task of the tracing hooks with tracing off."""
    assert not tracing_on()
    claimed = Claimed(
        Lease(TaskId("t"), "h", 1), OwnerId("o"), "noop", {}, request_meta={}
    )
    start = time.perf_counter()
    for _ in range(rounds):
        with creating(TaskId("t"), "noop", OwnerId("o")):
            pass
        run = RunTrace.start(claimed, "h")
        with run.current():
            run.event("task completed")
        run.close()
    return (time.perf_counter() - start) / rounds


async def main(trials: int, submitters: int, per: int) -> None:
    rates: dict[bool, list[float]] = {False: [], True: []}
    spans = 0
    with tempfile.TemporaryDirectory(prefix="mcpt-tracing-") as folder:
        for trial in range(trials):
            order = (False, True) if trial % 2 == 0 else (True, False)
            for on in order:
                db = Path(folder) / f"t{trial}-{'on' if on else 'off'}.db"
                rate, exported = await _trial(db, on, submitters, per)
                rates[on].append(rate)
                spans += exported
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    per_task = hooks_off_seconds(100_000)
    print(f"tasks: {submitters * per} per trial, {trials} trials, modes alternated")
    print(f"tracing off: {off:8.0f} tasks/s   {[round(r) for r in rates[False]]}")
    print(f"tracing on:  {on:8.0f} tasks/s   {[round(r) for r in rates[True]]}")
    print(f"on / off:    {on / off:8.3f}   ({spans} spans exported while on)")
    print(
        f"hooks with tracing off: {per_task * 1e6:.2f} us per task "
        f"= {per_task * off:.2%} of the engine's time per task"
    )


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
