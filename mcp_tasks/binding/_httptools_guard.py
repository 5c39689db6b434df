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
    ConnectionGuard,
    HeadDeadline,
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a `ConnectionGuard`.

    Build a subclass bound to one guard with `guarded_httptools_protocol`.
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = CONNECTION_LOG
        self._awaiting_head = True
        self._head = HeadDeadline(
            self, self.guard, self.loop, lambda: self._awaiting_head
        )

    def connection_made(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._head.opened(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._head.track(self.transport)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._awaiting_head = False

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        # A pipelined request starts now; otherwise the next head is awaited.
        self._awaiting_head = not pipelined
        self._head.track(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head.lost()
        super().connection_lost(exc)

    def close(self) -> None:
        """Close now, without a response (nothing was asked)."""
        self._head.close(self.transport)


def guarded_httptools_protocol(
    guard: ConnectionGuard,
) -> type[GuardedHttpToolsProtocol]:
    """A `GuardedHttpToolsProtocol` class bound to ``guard``."""
    return type(
        "BoundGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard}
    )
