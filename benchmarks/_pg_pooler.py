"""Both drivers behind PgBouncer in transaction mode, for `benchmarks.pg_drivers`.

What each driver's prepared statements do there with default settings and with
the one setting that makes them work, and whether LISTEN survives. PgBouncer
is Debian's package (installed when missing, if allowed and we are root); as
root it runs as the ``postgres`` user, since it refuses root like PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ._pg_clients import AsyncpgDriver, Driver, PsycopgDriver, reset_table
from .host import apt_install, free_port
from .pg_cluster import SERVER_USER

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
    url: str, server_port: int, iterations: int, install: bool
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
        await reset_table(direct, prefill=2000)
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
            f"default_pool_size=2, {POOLER_CLIENTS} clients x {iterations} x (get + claim)",
            "",
            "| configuration | ok | errors | get p50 ms | first error |",
            "|---|---|---|---|---|",
        ]
        listen: list[str] = []
        try:
            for make in configs:
                driver = await make()
                try:
                    lines.append((await _pooled(driver, iterations)).row())
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
