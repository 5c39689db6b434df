"""nginx in front of local servers, for tests of several replicas behind a balancer.

`running_nginx` writes a generated ``nginx.conf`` into a fresh temporary
folder, checks it with ``nginx -t``, and starts ``nginx -p DIR -c nginx.conf -g
'daemon off;'`` as a child process on a loopback socket that is already
listening: the test binds it (port 0) and hands it over in the ``NGINX``
environment variable, as nginx's own binary upgrade does. So nothing waits
for nginx to come up (a request made meanwhile queues in the socket's
backlog), and no other process can take the port in between. On exit it
stops nginx and removes the folder. Each `Route` maps one nginx
``location`` to a set of loopback backends, either round robin or sticky by a
request header (``hash $http_<header> consistent``). A `SessionRoute` is the
balancer for MCP replicas: requests without a session (every 2026-07-28
request, a 2025-11-25 ``initialize``) go round robin, and a 2025-11-25
session stays on the replica that created it. A plain hash of
``Mcp-Session-Id`` cannot do that: the ``initialize`` has no session id yet,
so the replica that creates the session is rarely the one its id hashes to,
and the others answer 404. Open-source nginx has no ``sticky learn``, so
the route writes the replica into the session id the client sees
(``r2.<the replica's id>``) and takes it off again on the way in.

nginx is Debian's package. When it is missing and we are root with apt-get it
is installed; otherwise `NginxUnavailableError` says in one line what to
install. As root, nginx's workers run as ``nobody``; the folder is made
readable for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.host import apt_install

#: The one line printed when nginx is missing and cannot be installed.
INSTALL_HINT = (
    "nginx not found: install it with `apt-get install nginx` (Debian/Ubuntu)"
)
#: Bound on checking the config, and on nginx exiting after SIGTERM.
START_TIMEOUT_SECONDS = 15.0
#: Connections that may wait for nginx to accept them.
BACKLOG = 128
#: Where Debian puts nginx (not on a normal user's PATH).
DEBIAN_NGINX = Path("/usr/sbin/nginx")


class NginxUnavailableError(RuntimeError):
    """Raised when nginx cannot be found, installed or started; one line."""


@dataclass(frozen=True, slots=True)
class Route:
    """One ``location`` and the backends it balances over.

    Attributes:
        location: An nginx location, e.g. ``"/mcp"`` or ``"~ ^/rr/"``.
        backends: Ports of the backends on ``127.0.0.1``.
        sticky_header: Balance by ``hash`` of this request header
            (``consistent``: ketama), instead of round robin.
    """

    location: str
    backends: Sequence[int]
    sticky_header: str | None = None

    def upstream(self, name: str) -> str:
        """The ``upstream`` block for this route."""
        lines = [f"    upstream {name} {{"]
        if self.sticky_header is not None:
            variable = "http_" + self.sticky_header.lower().replace("-", "_")
            lines.append(f"        hash ${variable} consistent;")
        lines += [f"        server 127.0.0.1:{port};" for port in self.backends]
        lines.append("    }")
        return "\n".join(lines)

    def block(self, name: str) -> str:
        """The ``location`` block proxying to upstream ``name``."""
        return "\n".join(
            [
                f"        location {self.location} {{",
                f"            proxy_pass http://{name};",
                # Streamable HTTP: keep-alive upstream, stream responses (SSE).
                "            proxy_http_version 1.1;",
                '            proxy_set_header Connection "";',
                "            proxy_buffering off;",
                "        }",
            ]
        )


@dataclass(frozen=True, slots=True)
class SessionRoute:
    """Round robin, except that a session stays on the replica that made it.

    The replica is named in the ``Mcp-Session-Id`` the client sees:
    ``r<n>.<id>``, ``n`` counting `backends` from 1. Only those names are
    recognised (a forged prefix reaches one of the same replicas, which knows
    no such session and answers 404), and the replica gets its own id back.

    Attributes:
        location: An nginx location, e.g. ``"/mcp"``.
        backends: Ports of the replicas on ``127.0.0.1``.
    """

    location: str
    backends: Sequence[int]

    def upstream(self, name: str) -> str:
        """The upstreams (all replicas, and each alone) and the maps."""
        lines = [f"    upstream {name} {{"]
        lines += [f"        server 127.0.0.1:{port};" for port in self.backends]
        lines.append("    }")
        for n, port in enumerate(self.backends, 1):
            lines.append(f"    upstream {name}_r{n} {{ server 127.0.0.1:{port}; }}")
        # Where a request goes: the replica its session id names, else any.
        lines.append(f"    map $http_mcp_session_id ${name}_upstream {{")
        lines += [
            f'        "~^r{n}\\." {name}_r{n};'
            for n in range(1, len(self.backends) + 1)
        ]
        lines += [f"        default {name};", "    }"]
        # The id the replica gave, without the prefix (only ours).
        lines += [
            f"    map $http_mcp_session_id ${name}_session {{",
            f'        "~^r(?:{self._known})\\.(?<{name}_sid>.+)$" ${name}_sid;',
            "        default $http_mcp_session_id;",
            "    }",
        ]
        # Which replica answered: the last address tried (after a failed
        # connect nginx tries the next one, and lists both).
        lines.append(f"    map $upstream_addr ${name}_replica {{")
        lines += [
            f'        "~(^|, )127\\.0\\.0\\.1:{port}$" r{n};'
            for n, port in enumerate(self.backends, 1)
        ]
        lines += ['        default "";', "    }"]
        # The id the client sees, when the replica sent one.
        lines += [
            f"    map $upstream_http_mcp_session_id ${name}_client_session {{",
            '        "" "";',
            f'        default "${name}_replica.$upstream_http_mcp_session_id";',
            "    }",
        ]
        return "\n".join(lines)

    def block(self, name: str) -> str:
        """The ``location`` block: routing by session, ids rewritten both ways."""
        return "\n".join(
            [
                f"        location {self.location} {{",
                f"            proxy_pass http://${name}_upstream;",
                # The replicas check Host (DNS rebinding): the client's, not
                # the upstream's name.
                "            proxy_set_header Host $http_host;",
                f"            proxy_set_header Mcp-Session-Id ${name}_session;",
                "            proxy_hide_header Mcp-Session-Id;",
                f"            add_header Mcp-Session-Id ${name}_client_session always;",
                "            proxy_http_version 1.1;",
                '            proxy_set_header Connection "";',
                "            proxy_buffering off;",
                "            proxy_read_timeout 1h;",
                f"            error_page 502 = @{name}_gone;",
                "        }",
                # A session whose replica is gone answers 404, as its replica
                # would once it forgot it: the client starts a new session.
                f"        location @{name}_gone {{",
                "            default_type application/json;",
                f'            if ($http_mcp_session_id ~ "^r(?:{self._known})\\.") {{',
                '                return 404 \'{"jsonrpc": "2.0", "id": null, '
                '"error": {"code": -32600, "message": '
                '"Session not found: its replica is gone"}}\';',
                "            }",
                "            return 502;",
                "        }",
            ]
        )

    @property
    def _known(self) -> str:
        """The replica numbers, as a regex alternation: ``1|2|3``."""
        return "|".join(str(n) for n in range(1, len(self.backends) + 1))


def render_config(
    folder: Path, port: int, routes: Sequence[Route | SessionRoute]
) -> str:
    """The whole ``nginx.conf``: one worker, every path inside ``folder``."""
    upstreams = [route.upstream(f"route{i}") for i, route in enumerate(routes)]
    locations = [route.block(f"route{i}") for i, route in enumerate(routes)]
    temp = [
        f"    {kind}_temp_path {folder}/temp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    ]
    return "\n".join(
        [
            # One worker: round robin is then a strict alternation.
            "worker_processes 1;",
            f"pid {folder}/nginx.pid;",
            f"error_log {folder}/error.log warn;",
            "events { worker_connections 256; }",
            "http {",
            f"    access_log {folder}/access.log;",
            *temp,
            *upstreams,
            "    server {",
            f"        listen 127.0.0.1:{port};",
            *locations,
            "    }",
            "}",
            "",
        ]
    )


def ensure_nginx(*, install: bool = True) -> Path:
    """Return the nginx binary, installing Debian's ``nginx`` if allowed.

    Raises:
        NginxUnavailableError: Not found and not installable.
    """
    for candidate in (shutil.which("nginx"), DEBIAN_NGINX):
        if candidate is not None and Path(candidate).exists():
            return Path(candidate)

    if install and apt_install("nginx"):
        return ensure_nginx(install=False)
    raise NginxUnavailableError(INSTALL_HINT)


@dataclass(frozen=True, slots=True)
class NginxServer:
    """A running nginx: where it listens and where its files are."""

    port: int
    folder: Path

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_nginx(routes: Sequence[Route | SessionRoute]) -> Generator[NginxServer]:
    """Start nginx with ``routes``; stop it and remove its folder afterwards.

    Raises:
        NginxUnavailableError: nginx is missing, or it did not start.
    """
    binary = ensure_nginx()
    # pytest's tmp_path is private to root; nginx's workers (nobody) must be
    # able to reach their temp folders, so the folder lives under /tmp.
    folder = Path(tempfile.mkdtemp(prefix="mcp-tasks-nginx-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        with _started(binary, folder, routes) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _started(
    binary: Path, folder: Path, routes: Sequence[Route | SessionRoute]
) -> Generator[NginxServer]:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(BACKLOG)
        port = listening.getsockname()[1]
        (folder / "nginx.conf").write_text(render_config(folder, port, routes))
        if not _config_accepted(binary, folder):
            raise NginxUnavailableError(f"nginx did not start: {_error_log(folder)}")
        process = _spawn(binary, folder, listening)
    # nginx holds the socket now; ours is closed, so once nginx is gone
    # connections are refused rather than left waiting.
    try:
        yield NginxServer(port, folder)
    finally:
        _stop(process)


def _config_accepted(binary: Path, folder: Path) -> bool:
    """``nginx -t``: whether nginx accepts the config (its reason in stderr.log)."""
    with (folder / "stderr.log").open("wb") as stderr:
        checked = subprocess.run(
            [*_argv(binary, folder), "-t"],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            timeout=START_TIMEOUT_SECONDS,
            check=False,
        )
    return checked.returncode == 0


def _argv(binary: Path, folder: Path) -> list[str]:
    (folder / "temp").mkdir(exist_ok=True)
    # -e: the log nginx writes before it has read the config (its compiled-in
    # default is /var/log/nginx, which a normal user cannot write).
    return [
        str(binary),
        "-p",
        str(folder),
        "-c",
        "nginx.conf",
        "-e",
        str(folder / "error.log"),
    ]


def _spawn(
    binary: Path, folder: Path, listening: socket.socket
) -> subprocess.Popen[bytes]:
    """nginx in the foreground, inheriting ``listening`` (the ``NGINX`` variable)."""
    fd = listening.fileno()
    environment = {**os.environ, "NGINX": f"{fd};"}
    with (folder / "stderr.log").open("wb") as stderr:
        return subprocess.Popen(
            [*_argv(binary, folder), "-g", "daemon off;"],
            cwd=folder,
            env=environment,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        # SIGTERM: nginx's fast shutdown; a test may still hold a stream open,
        # which the graceful SIGQUIT would wait for.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=START_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _error_log(folder: Path) -> str:
    """What nginx said: its stderr if anything, else the tail of error.log."""
    for name in ("stderr.log", "error.log"):
        with contextlib.suppress(FileNotFoundError):
            lines = (folder / name).read_text(errors="replace").splitlines()
            if lines:
                return " | ".join(line.strip() for line in lines[-10:])
    return "(nginx wrote no log)"


__all__ = [
    "INSTALL_HINT",
    "NginxServer",
    "NginxUnavailableError",
    "Route",
    "SessionRoute",
    "ensure_nginx",
    "render_config",
    "running_nginx",
]
