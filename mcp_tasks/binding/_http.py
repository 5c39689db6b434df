"""The Streamable HTTP transport: listening sockets, host checks and uvicorn.

`listen` binds before anything else starts, so an address in use is one
`ListenError` (and with port 0 the real port is known at once).
`transport_security` turns the ``[http]`` section into the SDK's DNS-rebinding
settings. `uvicorn_config` runs uvicorn's h11 protocol under a
`ConnectionGuard` and keeps uvicorn's own logging and proxy-header handling
out of the way: client addresses behind proxies are `Requesters`' business,
from the configured trusted proxies only.
"""

from __future__ import annotations

import logging
import math
import resource
import socket
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any, Final

import anyio
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings

from mcp_tasks._config import HttpSettings
from mcp_tasks._exceptions import ListenError
from mcp_tasks.binding._guard import ConnectionGuard, guarded_protocol

logger = logging.getLogger("mcp_tasks.http")

#: Names a server bound to loopback is reached by; always accepted.
LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "[::1]")
#: File descriptors kept free for everything but client connections: the
#: journal, tool subprocesses' pipes, the event loop, stdio.
FD_RESERVE: Final = 100
_BACKLOG: Final = 2048


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` at ``port``.

    With port 0 the system picks a port for the first address and the others
    use the same one.

    Raises:
        ListenError: the name does not resolve, or an address cannot be bound
            (in use, not local, not permitted).
    """
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(host, port, exc.strerror or str(exc)) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], bound_port(sockets[:1]), *address[2:])
            sock.bind(address)
            sock.listen(_BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(host, port, exc.strerror or str(exc)) from None
    return sockets


def bound_port(sockets: list[socket.socket]) -> int:
    """The port the first of ``sockets`` is bound to."""
    return int(sockets[0].getsockname()[1])


def url(host: str, port: int) -> str:
    """The MCP endpoint at ``host:port``."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/mcp"


def transport_security(host: str, http: HttpSettings) -> TransportSecuritySettings:
    """The SDK's Host and Origin checks (DNS-rebinding protection) for ``http``.

    On when the server listens on loopback or the config names allowed hosts
    or origins; loopback names are always accepted then. ``allowed_hosts =
    ["*"]`` turns both checks off.
    """
    configured = bool(http.allowed_hosts or http.allowed_origins)
    if "*" in http.allowed_hosts or (host not in LOOPBACK and not configured):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = [f"{name}:*" for name in _LOOPBACK_HOSTS] + list(_LOOPBACK_HOSTS)
    for name in http.allowed_hosts:
        hosts.append(name)
        if name.endswith("]") or ":" not in name:
            # Without a port, a name is accepted on any port (as loopback is).
            hosts.append(f"{name}:*")
    origins = [f"http://{name}:*" for name in _LOOPBACK_HOSTS]
    origins += [f"http://{name}" for name in _LOOPBACK_HOSTS]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=origins + list(http.allowed_origins),
    )


def connection_limits(configured: int) -> tuple[int, int]:
    """How many connections to hold, and how many to accept in one go.

    Each connection is a file descriptor, and asyncio accepts up to its
    ``backlog`` waiting connections in one burst, before any of them can be
    turned away: both must fit in the open-files limit, or a flood makes
    every accept fail (``Too many open files``). The connection limit is
    lowered (with a warning) only when ``configured`` cannot fit.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - FD_RESERVE
    if soft == resource.RLIM_INFINITY or configured + _BACKLOG <= room:
        return configured, _BACKLOG
    limit = max(1, min(configured, room // 2))
    if limit < configured:
        logger.warning(
            "http.max_connections %d does not fit the open-files limit %d "
            "(ulimit -n); allowing %d connections",
            configured,
            soft,
            limit,
            extra={"max_connections": limit, "open_files_limit": soft},
        )
    return limit, max(1, room - limit)


def uvicorn_config(app: Any, http: HttpSettings) -> uvicorn.Config:
    """uvicorn settings for ``app``: guarded connections, our logging only."""
    max_connections, backlog = connection_limits(http.max_connections)
    guard = ConnectionGuard(max_connections, http.header_timeout_seconds)
    return uvicorn.Config(
        app,
        http=guarded_protocol(guard),
        backlog=backlog,
        # Records go to the root handler (text or JSON, as configured).
        log_config=None,
        log_level="warning",
        lifespan="on",
        access_log=False,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default
        # (FORWARDED_ALLOW_IPS); only [http] trusted_proxies are believed.
        proxy_headers=False,
        timeout_keep_alive=max(1, math.ceil(http.header_timeout_seconds)),
        # Open streams (a client blocked in tasks/result) must not hold up
        # shutdown: the journal keeps the state, and clients reconnect.
        timeout_graceful_shutdown=2,
    )


def announce(host: str, ready: anyio.Event | None) -> Callable[[int], None]:
    """What `EmbeddedUvicorn` calls once it accepts connections on a port."""

    def started(port: int) -> None:
        # The line operators and tests wait for: requests are served now.
        where = url(host, port)
        logger.info("listening on %s", where, extra={"url": where, "port": port})
        if ready is not None:
            ready.set()

    return started


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (the CLI owns signals).

    It reports when it is serving through ``on_started`` rather than a flag
    someone would have to poll.
    """

    def __init__(
        self, config: uvicorn.Config, on_started: Callable[[int], None]
    ) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            bound = [s.getsockname()[1] for srv in self.servers for s in srv.sockets]
            self._on_started(bound[0] if bound else self.config.port)

    @contextmanager
    def capture_signals(self) -> Generator[None]:
        yield
