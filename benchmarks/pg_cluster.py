"""A throwaway PostgreSQL cluster on loopback, for tests, benchmarks and local use.

A developer tool, not part of the library: the test suite (``tests/pg_server.py``),
the PostgreSQL benchmarks and ``scripts/postgres`` all start their server here.

What a cluster is:

- a fresh temporary folder holding the data directory, the server log and a
  private unix-socket directory; it is removed when the cluster is removed;
- ``initdb -A trust`` (loopback only, so no passwords), UTF-8 with the C locale;
- a server listening on ``127.0.0.1`` on a free port, ``max_connections=200``
  for the stress tests, every durability setting left at its default
  (``fsync=on``, ``synchronous_commit=on``): the figures measured against it
  are honest. Only initdb's own final flush of the new files is skipped
  (``--no-sync``); that affects nothing the server later writes;
- started and stopped with ``pg_ctl`` (``stop -m fast``).

PostgreSQL refuses to run as root, so when this process is root the server
programs run as the ``postgres`` system user and the folder is handed to it.
The server binaries come from the machine (``initdb``/``pg_ctl`` on ``PATH``, or
Debian's ``/usr/lib/postgresql/<version>/bin``). When they are missing and we
are root with ``apt-get``, they are installed from the OS package
``postgresql``; otherwise `PostgresUnavailableError` says in one line what to
install.

This module imports nothing from ``mcp_tasks`` and no database driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import final

from .host import apt_install, free_port

#: The environment variable naming an existing server for the test suite.
TEST_URL_VARIABLE = "MCP_TASKS_TEST_POSTGRES_URL"
#: The one line printed when no server binaries can be found or installed.
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them with "
    "`apt-get install postgresql` (Debian/Ubuntu), or set "
    f"{TEST_URL_VARIABLE} to a server URL"
)
#: The system user that runs the server programs when we are root.
SERVER_USER = "postgres"
#: Connections the stress tests may open at once.
MAX_CONNECTIONS = 200
#: Bound on ``pg_ctl start``/``stop`` waiting for the server, in seconds.
PG_CTL_TIMEOUT_SECONDS = 60
#: Attempts at starting on a fresh free port when another process took ours.
START_ATTEMPTS = 5
#: Where the debian packages put the server binaries (one folder per version).
DEBIAN_BINDIRS = Path("/usr/lib/postgresql")
#: Lines of the server log quoted in an error.
LOG_TAIL_LINES = 20


class PostgresUnavailableError(RuntimeError):
    """Raised when no PostgreSQL server can be provided; the message is one line.

    Raised by `ensure_bindir` when the server binaries are missing and cannot be
    installed, and by `PgCluster` when ``initdb`` or the server fails (the
    message then ends with the last lines of the server log).
    """


# ------------------------------------------------------------------ binaries


def find_bindir() -> Path | None:
    """Return the folder holding ``initdb`` and ``pg_ctl``, or None.

    ``PATH`` wins (a developer's own build), then the newest Debian version.
    """
    initdb = shutil.which("initdb")
    if initdb is not None:
        folder = Path(initdb).resolve().parent
        if (folder / "pg_ctl").exists():
            return folder

    if DEBIAN_BINDIRS.is_dir():
        versions = [p / "bin" for p in DEBIAN_BINDIRS.iterdir() if p.name.isdigit()]
        usable = [
            b for b in versions if (b / "initdb").exists() and (b / "pg_ctl").exists()
        ]
        if usable:
            return max(usable, key=lambda b: int(b.parent.name))

    return None


def ensure_bindir(*, install: bool = True) -> Path:
    """Return the server binaries' folder, installing ``postgresql`` if allowed.

    Args:
        install: When True, a missing server is installed with `apt_install`
            (``postgresql``), if we are root and have ``apt-get``.

    Raises:
        PostgresUnavailableError: No binaries, and they could not be installed.
    """
    found = find_bindir()
    if found is not None:
        return found

    if install and apt_install("postgresql"):
        found = find_bindir()
        if found is not None:
            return found

    raise PostgresUnavailableError(INSTALL_HINT)


# ------------------------------------------------------------------- cluster


@dataclass(frozen=True, slots=True)
class _Account:
    """Who runs the server programs: None means this process's own user."""

    user: str | None

    @property
    def uid(self) -> int | None:
        return None if self.user is None else pwd.getpwnam(self.user).pw_uid

    @property
    def gid(self) -> int | None:
        return None if self.user is None else pwd.getpwnam(self.user).pw_gid


def _server_account() -> _Account:
    if os.geteuid() != 0:
        return _Account(None)

    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        # The Debian package creates the user; a hand-built server may not have.
        raise PostgresUnavailableError(
            f"running as root but there is no `{SERVER_USER}` user to run the "
            "server as: install the `postgresql` OS package or run as a normal user"
        ) from None
    return _Account(SERVER_USER)


def _base_folder(account: _Account) -> Path:
    """A temporary folder the server's user can reach (pytest's is root-only)."""
    base = Path(tempfile.gettempdir())
    if account.user is None or _traversable_by_others(base):
        return base
    return Path("/tmp")


def _traversable_by_others(folder: Path) -> bool:
    for part in [folder, *folder.parents]:
        if not part.stat().st_mode & stat.S_IXOTH:
            return False
    return True


@final
class PgCluster:
    """One throwaway cluster in its own folder; see the module docstring.

    Create it with `PgCluster.create`, then `start`; `remove` stops it and
    deletes the folder. `running_cluster` does all three around a block.
    """

    def __init__(self, root: Path, bindir: Path, user: str | None) -> None:
        """Wrap an existing cluster folder (from `create` or a saved state)."""
        self.root = root
        self.bindir = bindir
        self._account = _Account(user)
        self.port: int | None = None

    @property
    def data(self) -> Path:
        """The data directory (``PGDATA``)."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """The private unix-socket directory (nothing else listens there)."""
        return self.root / "sock"

    @property
    def log(self) -> Path:
        """The server log."""
        return self.root / "server.log"

    @property
    def user(self) -> str | None:
        """The system user running the server, or None for our own."""
        return self._account.user

    @classmethod
    def create(
        cls,
        *,
        bindir: Path | None = None,
        max_connections: int = MAX_CONNECTIONS,
        base_dir: Path | None = None,
    ) -> PgCluster:
        """Make a temporary folder and run ``initdb`` in it.

        Args:
            bindir: The server binaries; found (or installed) when None.
            max_connections: The server's ``max_connections``.
            base_dir: Where the temporary folder goes (default: the system's
                temporary folder, or ``/tmp`` when that one is private to us
                and the server runs as another user).

        Raises:
            PostgresUnavailableError: No binaries, or ``initdb`` failed.
        """
        bindir = bindir if bindir is not None else ensure_bindir()
        account = _server_account()
        base = base_dir if base_dir is not None else _base_folder(account)
        root = Path(tempfile.mkdtemp(prefix="mcp-tasks-pg-", dir=base))
        cluster = cls(root, bindir, account.user)
        try:
            cluster._initdb(max_connections)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def _initdb(self, max_connections: int) -> None:
        self.socket_dir.mkdir()
        if self._account.user is not None:
            for path in (self.root, self.socket_dir):
                shutil.chown(path, user=self._account.user, group=self._account.gid)

        self._run(
            "initdb",
            [
                *("-D", str(self.data), "-A", "trust", "-U", "postgres"),
                *("-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"),
            ],
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(max_connections),
        }
        # Appended by us (root or not) to a file the server's user owns; the
        # file keeps its owner, and later lines win over initdb's defaults.
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# mcp-tasks throwaway cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start the server on a free loopback port and wait until it accepts.

        Another process may take the probed port before the server binds it;
        then we try again on a new port, `START_ATTEMPTS` times in all.

        Raises:
            PostgresUnavailableError: The server did not start.
        """
        for _ in range(START_ATTEMPTS):
            port = free_port()
            try:
                self._pg_ctl("start", "-l", str(self.log), "-o", f"-p {port}")
            except PostgresUnavailableError:
                if "could not bind" in self.log_tail():
                    continue
                raise
            self.port = port
            return

        raise PostgresUnavailableError(
            f"PostgreSQL could not bind a free port in {START_ATTEMPTS} attempts: "
            + self.log_tail()
        )

    def stop(self) -> None:
        """Stop the server (``-m fast``: roll back open transactions, then exit).

        Falls back to ``-m immediate`` if the fast shutdown fails, so that a
        stuck server never outlives the run. Stopping a stopped cluster is a
        no-op.
        """
        if not (self.data / "postmaster.pid").exists():
            self.port = None
            return

        try:
            self._pg_ctl("stop", "-m", "fast")
        except PostgresUnavailableError:
            with contextlib.suppress(PostgresUnavailableError):
                self._pg_ctl("stop", "-m", "immediate")
        self.port = None

    def remove(self) -> None:
        """Stop the server if it runs, then delete the whole folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """The ``postgresql://`` URL of one database (TCP on loopback).

        Raises:
            RuntimeError: The cluster is not running.
        """
        if self.port is None:
            raise RuntimeError("the cluster is not running")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self) -> str:
        """The last lines of the server log, joined with `` | `` (one line)."""
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return "(no server log)"
        return " | ".join(line.strip() for line in lines[-LOG_TAIL_LINES:])

    def _pg_ctl(self, action: str, *args: str) -> None:
        argv = ["-D", str(self.data), "-w", "-t", str(PG_CTL_TIMEOUT_SECONDS)]
        self._run("pg_ctl", [*argv, *args, action])

    def _run(self, program: str, args: Sequence[str]) -> None:
        """Run one server program as the server's user; raise with its output."""
        # PG* variables (PGDATA, PGPORT, ...) from the caller's shell must not
        # redirect the programs to another cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["HOME"] = str(self.root)
        env["LC_ALL"] = "C"
        account = self._account
        done = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,
            env=env,
            user=account.uid,
            group=account.gid,
            extra_groups=None if account.user is None else [],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            output = " ".join((done.stdout + done.stderr).split())
            raise PostgresUnavailableError(
                f"{program} failed (exit {done.returncode}): {output} "
                f"[server log: {self.log_tail()}]"
            )


@contextlib.contextmanager
def running_cluster(
    *, max_connections: int = MAX_CONNECTIONS, base_dir: Path | None = None
) -> Generator[PgCluster]:
    """Create and start a cluster; stop it and delete its folder afterwards.

    The folder is removed even when the block or the start-up fails. The
    arguments are those of `PgCluster.create`.
    """
    cluster = PgCluster.create(max_connections=max_connections, base_dir=base_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def with_database(url: str, dbname: str) -> str:
    """Return ``url`` pointing at database ``dbname`` (query string kept).

    Raises:
        ValueError: ``url`` is not a ``postgresql://`` or ``postgres://`` URL.
    """
    match = re.fullmatch(r"(postgres(?:ql)?://[^/?#]*)(/[^?#]*)?([?#].*)?", url)
    if match is None:
        raise ValueError(
            f"not a PostgreSQL URL (want postgresql://user@host:port/db): {url!r}"
        )
    return f"{match.group(1)}/{dbname}{match.group(3) or ''}"


# ----------------------------------------------------------------------- CLI


#: Where ``scripts/postgres`` remembers its cluster (git-ignored).
STATE_FILE = Path(__file__).resolve().parent.parent / ".postgres-cluster.json"


def _load_state(path: Path) -> PgCluster | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    cluster = PgCluster(Path(state["root"]), Path(state["bindir"]), state["user"])
    cluster.port = int(state["port"])
    if not (cluster.data / "postmaster.pid").exists():
        # The machine rebooted or someone removed /tmp: forget it.
        path.unlink()
        shutil.rmtree(cluster.root, ignore_errors=True)
        return None
    return cluster


def _save_state(path: Path, cluster: PgCluster) -> None:
    state = {
        "root": str(cluster.root),
        "bindir": str(cluster.bindir),
        "user": cluster.user,
        "port": cluster.port,
    }
    path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None, *, state: Path = STATE_FILE) -> int:
    """``scripts/postgres start|stop|url``: one persistent throwaway cluster.

    ``start`` creates and starts it (or reports the running one) and prints its
    URL; ``url`` prints the URL; ``stop`` stops it and deletes its folder. The
    state lives in `STATE_FILE` (``.postgres-cluster.json`` at the repository
    root). Point the test suite at it with
    ``MCP_TASKS_TEST_POSTGRES_URL=$(scripts/postgres url) scripts/test``.

    Returns:
        The exit status: 0, 1 (no cluster, or it cannot start), 2 (usage).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in {"start", "stop", "url"}:
        print("usage: scripts/postgres start|stop|url", file=sys.stderr)
        return 2

    cluster = _load_state(state)
    try:
        if args[0] == "start":
            if cluster is None:
                cluster = PgCluster.create()
                try:
                    cluster.start()
                except BaseException:
                    cluster.remove()
                    raise
                _save_state(state, cluster)
            print(cluster.url())
        elif args[0] == "url":
            if cluster is None:
                print("no cluster is running: scripts/postgres start", file=sys.stderr)
                return 1
            print(cluster.url())
        elif cluster is not None:
            cluster.remove()
            state.unlink()
    except PostgresUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
