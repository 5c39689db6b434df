"""Connection limits for the HTTP transport: a cap, a request-head deadline.

uvicorn's h11 protocol waits without limit for a request head (its keep-alive
timer is off until the first response), and its ``limit_concurrency`` answers
503 only to *complete* requests. So about a thousand clients that each send
half a request hold a thousand sockets, the process runs out of file
descriptors, and asyncio logs ``Too many open files`` on every accept. The
protocol here closes the gap:

- at most ``max_connections`` connections are open; when a new one arrives at
  the cap, the connection that has waited longest for a request head is closed
  to make room (a normal client sends its head at once, so it is never the
  oldest), and only when every open connection is busy with a request is the
  new one refused with a 503;
- a request head must be complete within ``header_timeout`` of the moment the
  connection started waiting for it (when it opened, or when its previous
  response ended), else the connection is closed;
- a flood is logged once when the cap is first reached, and once more with its
  totals when the number of open connections has fallen to half the cap;
- accepts that fail for want of descriptors (asyncio retries each second) are
  logged at most once a minute, with a count (`accept_failed`), and so is each
  warning uvicorn has about what a client sent (``Invalid HTTP request
  received.``), which it would otherwise log once per connection.

Streams a client holds open for a response (SSE) are busy, never closed here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("mcp_tasks.http")

#: Seconds between two reports of failing accepts, or of one client mistake.
ACCEPT_FAILURE_LOG_INTERVAL = 60.0


class OncePerInterval(logging.Filter):
    """Passes each warning text once per interval; repeats are counted, not logged.

    Errors always pass: they are the server's faults, not a client's.
    """

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged (it may gain a count of its repeats)."""
        if record.levelno >= logging.ERROR:
            return True
        text = record.getMessage()
        last, repeats = self._seen.get(text, (None, 0))
        if last is not None and record.created - last < self._interval:
            self._seen[text] = (last, repeats + 1)
            return False
        if repeats:
            record.msg, record.args = (
                f"{text} ({repeats} more since the last report)",
                (),
            )
        if len(self._seen) >= 1000:  # uvicorn's texts are few; stay bounded anyway
            self._seen.clear()
        self._seen[text] = (record.created, 0)
        return True


#: What uvicorn's protocol logs per connection, through `OncePerInterval`.
CONNECTION_LOG = logging.getLogger("mcp_tasks.http.connections")
CONNECTION_LOG.addFilter(OncePerInterval(ACCEPT_FAILURE_LOG_INTERVAL))
# uvicorn logs TRACE lines per connection when its logger's own level allows.
CONNECTION_LOG.setLevel(logging.WARNING)

#: The whole answer to a connection refused at the cap (sent before reading).
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 38\r\n"
    b"connection: close\r\n\r\n"
    b"Too many connections; try again later\n"
)


class GuardedConnection(Protocol):
    """What the guard needs of a connection: closing it (it waits for a head)."""

    def close(self) -> None: ...


class ConnectionGuard:
    """The open connections of one server, and what a flood did to them.

    Connections are kept in arrival order, and those waiting for a request
    head in the order they started waiting, so the one to drop is found at
    once.
    """

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self._open: dict[GuardedConnection, None] = {}
        self._waiting: dict[GuardedConnection, None] = {}
        self.flooding = False
        self.refused = 0
        self.dropped = 0
        self.timed_out = 0
        self._accept_failures = 0
        self._accept_failure_logged: float | None = None

    def admit(self, connection: GuardedConnection) -> bool:
        """Make room for ``connection``; False if every open one is busy."""
        if len(self._open) >= self.max_connections:
            self._flood_started()
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                self.refused += 1
                return False
            self.dropped += 1
            oldest.close()  # forgets it, so the count stays at the cap
        self._open[connection] = None
        return True

    def waiting(self, connection: GuardedConnection) -> None:
        """``connection`` waits for a request head (again); it may be dropped."""
        self._waiting.setdefault(connection, None)

    def busy(self, connection: GuardedConnection) -> None:
        """``connection`` has a request in progress; it is never dropped."""
        self._waiting.pop(connection, None)

    def forget(self, connection: GuardedConnection) -> None:
        """``connection`` is closed (or closing)."""
        self._waiting.pop(connection, None)
        self._open.pop(connection, None)

    def closed(self, connection: GuardedConnection) -> None:
        """``connection`` is gone; ends a flood once half the cap is free."""
        self.forget(connection)
        self._flood_over_check()

    def accept_failed(self, error: OSError, now: float) -> None:
        """A connection could not be accepted (asyncio retries in a second).

        Logged when it first happens and then at most once a minute, with the
        count, rather than once per retry.
        """
        self._accept_failures += 1
        last = self._accept_failure_logged
        if last is not None and now - last < ACCEPT_FAILURE_LOG_INTERVAL:
            return
        logger.error(
            "cannot accept connections: %s (failed accepts since the last report: %d); "
            "%d connections are open",
            error.strerror or error,
            self._accept_failures,
            len(self._open),
            extra={"accept_failures": self._accept_failures},
        )
        self._accept_failure_logged = now
        self._accept_failures = 0

    def _flood_started(self) -> None:
        if self.flooding:
            return
        self.flooding = True
        logger.warning(
            "connection flood: the limit of %d connections (http.max_connections) "
            "is reached; closing those that have waited longest for a request to "
            "admit new ones, and refusing new ones while all are busy",
            self.max_connections,
            extra={"max_connections": self.max_connections},
        )

    def _flood_over_check(self) -> None:
        if self.flooding and len(self._open) <= self.max_connections // 2:
            logger.info(
                "connection flood over: %d connections closed early, %d timed out, "
                "%d refused",
                self.dropped,
                self.timed_out,
                self.refused,
                extra={
                    "dropped": self.dropped,
                    "timed_out": self.timed_out,
                    "refused": self.refused,
                },
            )
            self.flooding = False
            self.dropped = self.timed_out = self.refused = 0


class HeadDeadline:
    """One connection's standing with its `ConnectionGuard`, for either protocol.

    The guarded protocols (h11 here, httptools in `_httptools_guard`) differ
    only in how they tell that a connection waits for (the rest of) a request
    head, ``awaiting_head``; the bookkeeping is this: waiting connections are
    the guard's to shed, and each wait for a head has one deadline.
    """

    def __init__(
        self,
        connection: GuardedConnection,
        guard: ConnectionGuard,
        loop: asyncio.AbstractEventLoop,
        awaiting_head: Callable[[], bool],
    ) -> None:
        self._connection = connection
        self._guard = guard
        self._loop = loop
        self._awaiting_head = awaiting_head
        self._deadline: asyncio.TimerHandle | None = None

    def opened(self, transport: asyncio.Transport) -> bool:
        """Admit the new connection, or refuse it (answered and closed): whether admitted."""
        if not self._guard.admit(self._connection):
            transport.write(REFUSAL)
            transport.close()
            return False
        self.track(transport)
        return True

    def track(self, transport: asyncio.Transport) -> None:
        """After any event: waiting for a head (deadline running) or busy."""
        if transport.is_closing():
            self._guard.forget(self._connection)
        elif self._awaiting_head():
            # A deadline already running keeps its start: dribbling bytes
            # does not extend it.
            self._guard.waiting(self._connection)
            if self._deadline is None:
                self._deadline = self._loop.call_later(
                    self._guard.header_timeout, self._overdue
                )
        else:
            self._guard.busy(self._connection)
            self.stop()

    def lost(self) -> None:
        """The connection closed."""
        self.stop()
        self._guard.closed(self._connection)

    def close(self, transport: asyncio.Transport) -> None:
        """Close now, without a response (nothing was asked)."""
        self.stop()
        self._guard.forget(self._connection)
        if not transport.is_closing():
            transport.close()

    def stop(self) -> None:
        """No deadline (the head is in)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _overdue(self) -> None:
        self._deadline = None
        if self._awaiting_head():
            self._guard.timed_out += 1
            self._connection.close()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol under a `ConnectionGuard` (see the module docs).

    Build a subclass bound to one guard with `guarded_protocol`.
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = CONNECTION_LOG
        # Waiting for (the rest of) a request head.
        self._head = HeadDeadline(
            self, self.guard, self.loop, lambda: self.conn.their_state is h11.IDLE
        )

    def connection_made(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._head.opened(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._head.track(self.transport)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head.track(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head.lost()
        super().connection_lost(exc)

    def close(self) -> None:
        """Close now, without a response (nothing was asked)."""
        self._head.close(self.transport)


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedProtocol]:
    """A `GuardedProtocol` class bound to ``guard`` (uvicorn takes a class)."""
    return type("BoundGuardedProtocol", (GuardedProtocol,), {"guard": guard})
