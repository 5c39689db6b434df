"""The client's HTTP/1.1 transport against httpx's own, on the same server.

One mcp-tasks server (2026-07-28 wire, the end-to-end figure's settings), and
the end-to-end workload (8 clients, one lane each: a task call, then polls
until terminal) driven by two kinds of client in turns, ``--rounds`` times:

- ``httpcore``: ``TaskClient`` with httpx's default transport under it (the
  client before ``mcp_tasks._http11``; substituted in this process only);
- ``http11``: ``TaskClient`` as shipped.

Prints, per round, tasks/s and the client's and server's CPU per task, and the
ratios of the second to the first measured back to back, so the host's slow
spells hit both alike. The clients run on uvloop, as in ``benchmarks/run``.

    python -m benchmarks.client_http --rounds 5 --tasks 2000
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path

import anyio
import httpx2

import mcp_tasks.client as client_module
from mcp_tasks.client import MODERN_WIRE

from . import fig_e2e
from ._harness import BASE_LIMITS, OurServer, http_clients, token_for

CLIENTS = 8


@contextlib.contextmanager
def _transport(kind: str) -> Generator[None]:
    """``TaskClient.http`` builds its transport with httpx's default one, or ours."""
    shipped = client_module.Http11Transport
    factory: Callable[[], httpx2.AsyncBaseTransport] = (
        httpx2.AsyncHTTPTransport if kind == "httpcore" else shipped
    )
    client_module.Http11Transport = factory  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        client_module.Http11Transport = shipped  # type: ignore[misc]


async def _phase(url: str, pid: int, kind: str, tasks: int) -> fig_e2e.Phase:
    tokens = [token_for(f"c{i}") for i in range(CLIENTS)]
    with _transport(kind):
        async with http_clients(
            url, CLIENTS, wire=MODERN_WIRE, tokens=tokens
        ) as clients:
            await fig_e2e.drive(clients, CLIENTS * 20, 1, tasks=True, pids=[pid])
            return await fig_e2e.drive(clients, tasks, 1, tasks=True, pids=[pid])


async def _main(rounds: int, tasks: int) -> None:
    with tempfile.TemporaryDirectory(prefix="client-http-") as folder:
        server = OurServer(
            Path(folder) / "server",
            limits=BASE_LIMITS,
            clients=[f"c{i}" for i in range(CLIENTS)],
        ).write()
        with server.http_process() as process:
            cpu_ratios: list[float] = []
            rate_ratios: list[float] = []
            for index in range(rounds):
                phases: dict[str, fig_e2e.Phase] = {}
                for kind in ("httpcore", "http11"):
                    phase = await _phase(process.url, process.pid, kind, tasks)
                    phases[kind] = phase
                    print(
                        f"round {index + 1} {kind:8}: {phase.rate:5.0f} tasks/s, "
                        f"client CPU {phase.client_cpu / phase.count * 1e3:.2f} ms/task, "
                        f"server CPU {phase.server_cpu / phase.count * 1e3:.2f} ms/task",
                        flush=True,
                    )
                old, new = phases["httpcore"], phases["http11"]
                cpu_ratios.append(new.client_cpu / old.client_cpu)
                rate_ratios.append(new.rate / old.rate)
                print(
                    f"round {index + 1} http11 ÷ httpcore: client CPU per task "
                    f"{cpu_ratios[-1]:.2f}, tasks/s {rate_ratios[-1]:.2f}",
                    flush=True,
                )
            print(
                f"median over {rounds} rounds: client CPU per task "
                f"{statistics.median(cpu_ratios):.2f} "
                f"({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}), tasks/s "
                f"{statistics.median(rate_ratios):.2f} "
                f"({min(rate_ratios):.2f}-{max(rate_ratios):.2f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.client_http")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args()
    anyio.run(_main, args.rounds, args.tasks, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()
