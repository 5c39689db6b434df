"""The HTTP server's stack, one change at a time: event loop and request parser.

``mcp-tasks serve --http`` in four configurations (``[http] event_loop`` ×
``parser``: asyncio or uvloop, h11 or httptools), interleaved round by round
so the host's noise hits them alike. Each round starts a fresh server per
configuration and measures its CPU per request (read from /proc) over
``--calls`` sequential requests of each kind from one 2025-11-25 client:
``tasks/get``, a task-augmented no-op call (submit and run) and a plain no-op
call. Prints the median over rounds and each configuration over the first.

    python -m benchmarks.http_stack --rounds 3 --calls 600
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from mcp_tasks.client import TaskClient

from ._harness import BASE_LIMITS, LEGACY, OurServer, cpu_seconds, submit_task

#: (event_loop, parser) per configuration, the baseline first.
CONFIGS: dict[str, tuple[str, str]] = {
    "asyncio + h11": ("asyncio", "h11"),
    "uvloop + h11": ("uvloop", "h11"),
    "asyncio + httptools": ("asyncio", "httptools"),
    "uvloop + httptools": ("uvloop", "httptools"),
}
KINDS = ("get", "task", "plain")


async def _one(root: Path, loop: str, parser: str, calls: int) -> dict[str, float]:
    server = OurServer(root, limits=BASE_LIMITS).write()
    with server.config.open("a") as config:
        config.write(f'\n[http]\nevent_loop = "{loop}"\nparser = "{parser}"\n')
    with server.http_process() as process:
        async with TaskClient.http(process.url, wire=LEGACY) as client:
            created = await submit_task(client, "noop")
            task_id = str(created["taskId"])
            kinds: dict[str, Callable[[], Awaitable[Any]]] = {
                "get": lambda: client.get_task(task_id),
                "task": lambda: submit_task(client, "noop"),
                "plain": lambda: client.call_tool("noop", {}),
            }
            for fn in kinds.values():  # warm up every path
                for _ in range(20):
                    await fn()
            costs: dict[str, float] = {}
            for kind, fn in kinds.items():
                before = cpu_seconds(process.pid)
                for _ in range(calls):
                    await fn()
                await anyio.sleep(0.2)  # let the last background work finish
                costs[kind] = (cpu_seconds(process.pid) - before) / calls * 1e3
            return costs


async def _main(rounds: int, calls: int) -> None:
    samples: dict[str, dict[str, list[float]]] = {
        name: {kind: [] for kind in KINDS} for name in CONFIGS
    }
    with tempfile.TemporaryDirectory(prefix="http-stack-") as work:
        for round_ in range(rounds):
            for name, (loop, parser) in CONFIGS.items():
                root = Path(work) / f"{round_}-{loop}-{parser}"
                costs = await _one(root, loop, parser, calls)
                for kind in KINDS:
                    samples[name][kind].append(costs[kind])
                print(
                    f"round {round_} {name}: "
                    + ", ".join(f"{k} {v:.3f} ms" for k, v in costs.items()),
                    flush=True,
                )
    base = {kind: statistics.median(samples["asyncio + h11"][kind]) for kind in KINDS}
    print("\nserver CPU ms per request, median over rounds (÷ asyncio + h11)")
    for name, by_kind in samples.items():
        cells: list[str] = []
        for kind in KINDS:
            median = statistics.median(by_kind[kind])
            cells.append(f"{kind} {median:.3f} ({median / base[kind]:.2f}x)")
        print(f"  {name:22} " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.http_stack", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=600)
    args = parser.parse_args()
    anyio.run(_main, args.rounds, args.calls)


if __name__ == "__main__":
    main()
