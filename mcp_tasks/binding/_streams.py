"""Which Streamable HTTP sessions have their standalone (GET) stream open.

A server-to-client request the server sends on a session's standalone channel
travels on that session's GET stream. mcp 2.3 drops it, without an error, when
the client has no GET stream open at that moment, and then waits for an answer
that can never come. A question "in flight" on such a session would keep the
session's other streams (``tasks/result``) from asking it, so pushes go only
to sessions whose GET stream is open, questions are offered again when one
opens, and pushed copies stop blocking the session when it closes.

mcp 2.3 has no public notice of GET streams opening and closing, but the ASGI
traffic shows both: `StandaloneStreams.wrap` puts a thin ASGI middleware in
front of the SDK's app that sees the ``200`` answer to a GET carrying an
``Mcp-Session-Id`` (the SDK answers every refused GET with another status) and
the end of that response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("mcp_tasks.binding.streams")

_SESSION_HEADER = b"mcp-session-id"


def _ignore(session_id: str) -> None:
    return


class StandaloneStreams:
    """Open GET streams per session id, learnt from the HTTP traffic."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._opened: Callable[[str], None] = _ignore
        self._closed: Callable[[str], None] = _ignore

    def notify(
        self, opened: Callable[[str], None], closed: Callable[[str], None]
    ) -> None:
        """Call ``opened``/``closed`` with the session id as its stream opens/closes.

        Both are called on the event loop and must not block.
        """
        self._opened = opened
        self._closed = closed

    def is_open(self, session_id: str) -> bool:
        """Whether session ``session_id`` has a GET stream open now."""
        return self._open.get(session_id, 0) > 0

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind a middleware that tracks its GET streams."""

        async def tracked(scope: Scope, receive: Receive, send: Send) -> None:
            session_id = _standalone_session(scope)
            if session_id is None:
                await app(scope, receive, send)
                return
            opened = False

            async def watch(message: Message) -> None:
                nonlocal opened
                await send(message)
                if (
                    not opened
                    and message["type"] == "http.response.start"
                    and message["status"] == 200
                ):
                    opened = True
                    self._open[session_id] = self._open.get(session_id, 0) + 1
                    self._call(self._opened, session_id)

            try:
                await app(scope, receive, watch)
            finally:
                if opened:
                    remaining = self._open[session_id] - 1
                    if remaining:
                        self._open[session_id] = remaining
                    else:
                        del self._open[session_id]
                    self._call(self._closed, session_id)

        return tracked

    @staticmethod
    def _call(callback: Callable[[str], None], session_id: str) -> None:
        try:
            callback(session_id)
        except Exception:  # a listener bug must not break the HTTP exchange
            logger.exception("stream listener failed for session %s", session_id)


def _standalone_session(scope: Scope) -> str | None:
    """The session id of a GET that may open a standalone stream, else None."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return None
    for name, value in scope["headers"]:
        if name == _SESSION_HEADER:
            return bytes(value).decode("latin-1")
    return None
