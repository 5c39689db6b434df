"""The client's HTTP/1.1 transport against httpx's own, on the same server.

One server of the end-to-end figure (``--system``: mcp-tasks on 2026-07-28 by
default, on 2025-11-25 with ``mcp-tasks-2025``, or the FastMCP peer with
``fastmcp``, from ``benchmarks/run``'s virtual environment), and the end-to-end workload (8 clients, one lane each: a
task call, then polls until terminal) driven by two kinds of client in turns,
``--rounds`` times:

- ``httpcore``: ``TaskClient`` with httpx's default transport under it (the
  client before ``mcp_tasks._http11``; substituted in this process only);
- ``http11``: ``TaskClient`` as shipped.

Prints, per round, tasks/s and the client's and server's CPU per task, and the
ratios of the second to the first measured back to back, so the host's slow
spells hit both alike. The clients run on uvloop, as in ``benchmarks/run``.

    python -m benchmarks.client_http --rounds 5 --tasks 2000
    python -m benchmarks.client_http --rounds 3 --tasks 1000 --system fastmcp

The second shows whether a peer's pace depends on the client's transport.
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

from . import fig_e2e
from ._harness import HERE, http_clients, token_for

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


def _system(name: str) -> fig_e2e.System:
    if name == "fastmcp":
        python = HERE / ".venvs" / "fastmcp" / "bin" / "python"
        if not python.exists():
            raise SystemExit(
                f"no FastMCP interpreter at {python}: run benchmarks/run once"
            )
        return fig_e2e.systems(fig_e2e.Peers(None, python, None))[-1]
    ours = fig_e2e.systems(fig_e2e.Peers(None, None, None))
    return ours[0] if name == "mcp-tasks-2025" else ours[1]


async def _phase(
    system: fig_e2e.System, url: str, pid: int, kind: str, tasks: int
) -> fig_e2e.Phase:
    tokens = [token_for(f"c{i}") for i in range(CLIENTS)] if system.tokens else None
    with _transport(kind):
        async with http_clients(
            url, CLIENTS, wire=system.wire, tokens=tokens
        ) as clients:
            await fig_e2e.drive(clients, CLIENTS * 20, 1, tasks=True, pids=[pid])
            return await fig_e2e.drive(clients, tasks, 1, tasks=True, pids=[pid])


async def _main(rounds: int, tasks: int, system_name: str) -> None:
    system = _system(system_name)
    print(f"{system.name}, {CLIENTS} clients, {tasks} tasks per phase", flush=True)
    with tempfile.TemporaryDirectory(prefix="client-http-") as folder:
        with system.start(Path(folder)) as processes:
            process = processes[0]
            cpu_ratios: list[float] = []
            rate_ratios: list[float] = []
            for index in range(rounds):
                phases: dict[str, fig_e2e.Phase] = {}
                for kind in ("httpcore", "http11"):
                    phase = await _phase(system, process.url, process.pid, kind, tasks)
                    phases[kind] = phase
                    print(
                        f"round {index + 1} {kind:8}: {phase.rate:5.0f} tasks/s, "
                        f"client CPU {phase.client_cpu / phase.count * 1e3:.2f} ms/task, "
                        f"server CPU {phase.server_cpu / phase.count * 1e3:.2f} ms/task, "
                        f"{phase.polls / phase.count:.2f} polls/task",
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
    parser.add_argument(
        "--system",
        choices=("mcp-tasks", "mcp-tasks-2025", "fastmcp"),
        default="mcp-tasks",
    )
    args = parser.parse_args()
    anyio.run(
        _main,
        args.rounds,
        args.tasks,
        args.system,
        backend_options={"use_uvloop": True},
    )


if __name__ == "__main__":
    main()
