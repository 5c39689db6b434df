"""uvicorn's httptools protocol under a `ConnectionGuard` (see `_connections`).

The same limits as `GuardedProtocol` gives the h11 protocol: a connection cap
that drops the connection waiting longest for a request head, and a deadline
for each head. httptools has no connection state to ask, so the protocol
tracks it from the parser's callbacks: a connection waits for a head from
when it opens or its last response ends (with nothing pipelined) until the
head is complete. Imported only when httptools is installed (`_http`).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mcp_tasks.binding._connections import (
    CONNECTION_LOG,
    REFUSAL,
    ConnectionGuard,
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a `ConnectionGuard`.

    Build a subclass bound to one guard with `guarded_httptools_protocol`.
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = CONNECTION_LOG
        self._head_deadline: asyncio.TimerHandle | None = None
        self._awaiting_head = True

    def connection_made(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.write(REFUSAL)
            transport.close()
            return
        self._track()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._awaiting_head = False

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        # A pipelined request starts now; otherwise the next head is awaited.
        self._awaiting_head = not pipelined
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        self.guard.closed(self)
        super().connection_lost(exc)

    def close(self) -> None:
        """Close now, without a response (nothing was asked)."""
        self._stop_deadline()
        self.guard.forget(self)
        if not self.transport.is_closing():
            self.transport.close()

    def _track(self) -> None:
        if self.transport.is_closing():
            self.guard.forget(self)
        elif self._awaiting_head:
            # A deadline already running keeps its start: dribbling bytes
            # does not extend it.
            self.guard.waiting(self)
            if self._head_deadline is None:
                self._head_deadline = self.loop.call_later(
                    self.guard.header_timeout, self._head_overdue
                )
        else:
            self.guard.busy(self)
            self._stop_deadline()

    def _head_overdue(self) -> None:
        self._head_deadline = None
        if self._awaiting_head:
            self.guard.timed_out += 1
            self.close()

    def _stop_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None


def guarded_httptools_protocol(
    guard: ConnectionGuard,
) -> type[GuardedHttpToolsProtocol]:
    """A `GuardedHttpToolsProtocol` class bound to ``guard``."""
    return type(
        "BoundGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard}
    )
