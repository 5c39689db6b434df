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

import asyncio
import importlib.util
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
from mcp_tasks.binding._connections import ConnectionGuard, guarded_protocol

logger = logging.getLogger("mcp_tasks.http")

#: Names a server bound to loopback is reached by; always accepted.
LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "[::1]")
#: File descriptors kept free for everything but client connections: the
#: journal, tool subprocesses' pipes, the event loop, stdio.
FD_RESERVE: Final = 100
#: The kernel's queue of connections waiting to be accepted.
_BACKLOG: Final = 2048
#: How many connections asyncio accepts per event-loop tick. It accepts as
#: many as its ``backlog`` argument, each a descriptor before the guard can
#: turn it away, and a flood keeps a few ticks' worth in flight.
_ACCEPT_BURST: Final = 16
_IN_FLIGHT: Final = 4 * _ACCEPT_BURST
#: asyncio's message when accept() fails for want of descriptors or memory.
_ACCEPT_FAILED: Final = "socket.accept() out of system resource"


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
    if "*" in http.allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if host not in LOOPBACK and not configured:
        logger.warning(
            "Host and Origin headers are not checked on %s (no DNS-rebinding "
            "protection); name the server's public names in http.allowed_hosts",
            host,
        )
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


def connection_limit(configured: int) -> int:
    """``configured``, or less if the open-files limit cannot hold that many.

    Each connection is a file descriptor, and so is each connection accepted
    but not yet turned away: if they do not fit, a flood makes every accept
    fail (``Too many open files``). The limit is lowered with a warning.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - FD_RESERVE - _IN_FLIGHT
    if soft == resource.RLIM_INFINITY or configured <= room:
        return configured
    limit = max(1, room)
    logger.warning(
        "http.max_connections %d does not fit the open-files limit %d "
        "(ulimit -n); allowing %d connections",
        configured,
        soft,
        limit,
        extra={"max_connections": limit, "open_files_limit": soft},
    )
    return limit


def connection_guard(http: HttpSettings) -> ConnectionGuard:
    """The guard of one server's connections, sized to fit the open-files limit."""
    return ConnectionGuard(
        connection_limit(http.max_connections), http.header_timeout_seconds
    )


@contextmanager
def accept_failures_reported(guard: ConnectionGuard) -> Generator[None]:
    """Route asyncio's failed accepts to ``guard``, which logs them sparingly.

    asyncio logs ``socket.accept() out of system resource`` with a traceback
    every time it retries (each second while descriptors are short); other
    errors go to the loop's previous handler as before.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if context.get("message") == _ACCEPT_FAILED and isinstance(error, OSError):
            guard.accept_failed(error, loop.time())
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


def fast_loop(http: HttpSettings) -> bool:
    """Whether to serve HTTP on uvloop: configured, or ``auto`` and installed."""
    if http.event_loop == "auto":
        return importlib.util.find_spec("uvloop") is not None
    return http.event_loop == "uvloop"


def http_protocol(http: HttpSettings, guard: ConnectionGuard) -> type[Any]:
    """uvicorn's protocol class under ``guard``: httptools if installed, else h11.

    The setting is checked at start-up (`mcp_tasks._config`); ``auto`` falls
    back to h11 where no httptools wheel is installed.
    """
    use_httptools = http.parser == "httptools" or (
        http.parser == "auto" and importlib.util.find_spec("httptools") is not None
    )
    if use_httptools:
        from mcp_tasks.binding._httptools_guard import guarded_httptools_protocol

        return guarded_httptools_protocol(guard)
    return guarded_protocol(guard)


def uvicorn_config(
    app: Any, http: HttpSettings, guard: ConnectionGuard
) -> uvicorn.Config:
    """uvicorn settings for ``app``: ``guard``ed connections, our logging only."""
    return uvicorn.Config(
        app,
        http=http_protocol(http, guard),
        # What asyncio accepts per tick; `EmbeddedUvicorn` restores the
        # kernel's queue (asyncio passes this to listen() as well).
        backlog=_ACCEPT_BURST,
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
        for sock in sockets or []:
            sock.listen(_BACKLOG)
        if not self.should_exit:
            bound = [s.getsockname()[1] for srv in self.servers for s in srv.sockets]
            self._on_started(bound[0] if bound else self.config.port)

    @contextmanager
    def capture_signals(self) -> Generator[None]:
        yield
