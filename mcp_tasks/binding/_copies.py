"""The copies of a task's questions that are out to clients (2025-11-25).

On the handshake wire a question reaches a person as a server-to-client request
(``elicitation/create``, ``sampling/createMessage``, ``roots/list``) on one
stream of their session: the standalone stream (a push), an open
``tasks/result``, or the ``tools/call`` of a synchronous call. `Copies` keeps
the book of those requests, for every session of this process:

- **One copy per session.** A stream asks only when no other stream of the same
  session has the question open, so a person never sees the same dialog twice.
  A ``tasks/result`` stream defers to a push the session already holds, and a
  push defers to a ``tasks/result``. The one exception: a newer request stream
  takes over from an older one (a client that reissues ``tasks/result`` has
  usually lost the first), withdrawing the older copy first.
- **Withdrawn once settled.** When the engine reports a question answered (on
  any stream, any session, the other wire, or by its timeout) or its task over,
  every copy still open is withdrawn: the waiting send stops, and the client
  gets ``notifications/cancelled`` naming that request's id, with a reason, on
  the stream that carried the request. The engine event, not the local answer,
  triggers it, so answers recorded by another process withdraw copies here too.
- **Handed on.** A copy that ends without settling its question (the client
  refused it, the standalone stream went away) wakes the session's other
  waiting streams, so they ask in its place.

Each request goes out under an id minted here (``CallOptions.request_id``), so
a withdrawal can name it. The SDK's own abandonment notice ("caller
cancelled") is turned off for these requests (``cancel_on_abandon``): exactly
one ``notifications/cancelled`` is sent, by `Copies.send`, with our reason.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from mcp.server.connection import Connection
from mcp.shared.dispatcher import CallOptions, Outbound

logger = logging.getLogger("mcp_tasks.binding.questions")

#: How many times one stream may ask one question (re-asks after an answer
#: that did not fit, or after another stream of the session handed it on).
MAX_ASKS_PER_CHANNEL: Final = 3
#: Bound on sending one withdrawal notice (the stream may be wedged).
NOTICE_SECONDS: Final = 5.0
#: Request ids minted here never parse as integers, so they cannot collide
#: with the SDK's own numeric ids on the same session (see `CallOptions`).
REQUEST_ID_PREFIX: Final = "mcp-tasks-q"

ANSWERED: Final = "The question was answered elsewhere or timed out."
ASKED_AGAIN: Final = "The question was asked again on another stream of this session."
NOT_WAITING: Final = "No longer waiting for an answer on this stream."

_channel_numbers = itertools.count(1)


@dataclass(eq=False)
class Channel:
    """One stream of one session that can carry questions."""

    connection: Connection
    """The session."""
    outbound: Outbound
    """Sends on this stream (the SDK's request- or connection-scoped channel)."""
    name: str
    """What the logs call it: ``standalone stream``, ``tasks/result stream``..."""
    standalone: bool
    """Whether this is the session's standalone stream (a push)."""
    number: int = field(default_factory=lambda: next(_channel_numbers))
    """Opening order: a newer request stream takes a question over."""
    asks: dict[str, int] = field(default_factory=dict[str, int])
    """How often each question key was asked here."""


@dataclass(eq=False)
class Copy:
    """One question of one task, out (or about to go out) on one channel."""

    channel: Channel
    task_id: str
    key: str
    request_id: str | None = None
    """The JSON-RPC id of the request in flight, once sent."""
    withdrawn: str | None = None
    """Why it was withdrawn; None while it stands."""
    detached: bool = False
    """Its standalone stream closed: it no longer keeps other streams from asking."""
    scope: anyio.CancelScope | None = None
    """Cancels the waiting send; set only while the request is in flight."""
    notice_via: Outbound | None = None
    """Where to send the withdrawal, if not on this copy's own stream."""

    def withdraw(self, reason: str, via: Outbound | None = None) -> None:
        """Stop waiting for this copy's answer; `Copies.send` tells the client.

        ``via`` sends the notice on another stream of the session, for a copy
        whose own stream is gone (the client matches it by request id).
        """
        if self.withdrawn is None:
            self.withdrawn = reason
            self.notice_via = via
        if self.scope is not None:
            self.scope.cancel()


def _session(connection: Connection) -> str:
    return connection.session_id or f"#{id(connection):x}"


class Copies:
    """Which questions are open on which session; see the module docstring."""

    def __init__(self) -> None:
        # task id -> question key -> copies (usually one per session).
        self._open: dict[str, dict[str, list[Copy]]] = {}
        # Streams reading a task's open questions (a journal read), and what
        # was settled meanwhile (None: the whole task ended): a stream that
        # read a question before its answer must not ask it afterwards.
        self._readers: dict[str, int] = {}
        self._stale: dict[str, set[str] | None] = {}
        # (session, task id) -> the waiting streams to wake when a copy is handed on.
        self._watchers: dict[tuple[Connection, str], dict[anyio.Event, Channel]] = {}
        self._request_ids = itertools.count(1)

    # ---------------------------------------------------------------- asking

    @contextmanager
    def reading(self, task_id: str) -> Generator[None]:
        """Around reading a task's open questions and claiming copies of them."""
        self._readers[task_id] = self._readers.get(task_id, 0) + 1
        try:
            yield
        finally:
            remaining = self._readers[task_id] - 1
            if remaining:
                self._readers[task_id] = remaining
            else:
                del self._readers[task_id]
                self._stale.pop(task_id, None)

    def claim(self, channel: Channel, task_id: str, key: str) -> Copy | None:
        """The copy ``channel`` may send now, or None if it must not ask.

        Call it within `reading`, right after reading the open questions.
        """
        if task_id in self._stale:
            stale = self._stale[task_id]
            if stale is None or key in stale:
                return None
        if channel.asks.get(key, 0) >= MAX_ASKS_PER_CHANNEL:
            return None
        copies = self._open.setdefault(task_id, {}).setdefault(key, [])
        mine = [
            c
            for c in copies
            if c.channel.connection is channel.connection and c.withdrawn is None
        ]
        for held in mine:
            if not held.detached and not _takes_over(channel, held.channel):
                if not _same_stream(channel, held.channel):
                    logger.info(
                        "question %r of task %s is already open on session %s "
                        "(%s, request %s); not asked again on the %s",
                        key,
                        task_id,
                        _session(channel.connection),
                        held.channel.name,
                        held.request_id,
                        channel.name,
                    )
                return None
        for held in mine:  # detached, or on an older request stream
            held.withdraw(ASKED_AGAIN, via=channel.outbound if held.detached else None)
        copy = Copy(channel, task_id, key)
        copies.append(copy)
        channel.asks[key] = channel.asks.get(key, 0) + 1
        return copy

    async def send(
        self, copy: Copy, method: str, params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Send ``copy``'s request and return the client's result.

        Returns None when the copy was withdrawn (before or while it was out).
        Any other cancellation also withdraws it from the client, then
        propagates. Errors of the exchange (the client refused, the session
        ended) propagate as the SDK raises them.
        """
        channel = copy.channel
        with anyio.CancelScope() as scope:
            if copy.withdrawn is not None:
                return None
            copy.scope = scope
            copy.request_id = f"{REQUEST_ID_PREFIX}{next(self._request_ids)}"
            options: CallOptions = {
                "request_id": copy.request_id,
                "cancel_on_abandon": False,
            }
            logger.info(
                "question %r of task %s asked on session %s (%s, request %s)",
                copy.key,
                copy.task_id,
                _session(channel.connection),
                channel.name,
                copy.request_id,
            )
            try:
                return await channel.outbound.send_raw_request(method, params, options)
            except anyio.get_cancelled_exc_class():
                await self._notify_withdrawn(copy)
                raise
            finally:
                copy.scope = None
        return None

    async def _notify_withdrawn(self, copy: Copy) -> None:
        reason = copy.withdrawn or NOT_WAITING
        channel = copy.channel
        with anyio.move_on_after(NOTICE_SECONDS, shield=True):
            try:
                await (copy.notice_via or channel.outbound).notify(
                    "notifications/cancelled",
                    {"requestId": copy.request_id, "reason": reason},
                )
            except Exception as exc:  # the stream is gone: nothing left to withdraw
                logger.debug("withdrawing %s failed: %r", copy.request_id, exc)
        logger.info(
            "withdrew request %s (question %r of task %s) on session %s: %s",
            copy.request_id,
            copy.key,
            copy.task_id,
            _session(channel.connection),
            reason,
        )

    def release(self, copy: Copy) -> None:
        """``copy`` is done (answered, refused, withdrawn or failed); forget it.

        If its question is still open and no other stream of the session holds
        it, the session's waiting streams are woken to ask in its place.
        """
        keys = self._open.get(copy.task_id, {})
        copies = keys.get(copy.key, [])
        if copy in copies:
            copies.remove(copy)
        if not copies:
            keys.pop(copy.key, None)
        if not keys:
            self._open.pop(copy.task_id, None)
        if copy.withdrawn is not None:
            return  # settled, over, or taken over: nothing to hand on
        if any(
            c.channel.connection is copy.channel.connection
            and c.withdrawn is None
            and not c.detached
            for c in copies
        ):
            return
        self._wake(copy.channel.connection, copy.task_id, but=copy.channel)

    # ------------------------------------------------------- settling events

    def settled(self, task_id: str, key: str) -> None:
        """The engine recorded an answer to ``key``: withdraw every copy of it."""
        if task_id in self._readers:
            stale = self._stale.setdefault(task_id, set())
            if stale is not None:
                stale.add(key)
        for copy in list(self._open.get(task_id, {}).get(key, ())):
            copy.withdraw(ANSWERED)

    def task_ended(self, task_id: str, reason: str) -> None:
        """The task reached a terminal status: withdraw all its copies."""
        if task_id in self._readers:
            self._stale[task_id] = None
        for copies in list(self._open.get(task_id, {}).values()):
            for copy in list(copies):
                copy.withdraw(reason)

    def detach(self, connection: Connection) -> None:
        """The session's standalone stream closed: what it carried may be lost.

        Its copies keep waiting (an answer may still come back over a POST),
        but no longer keep the session's other streams from asking.
        """
        for keys in list(self._open.values()):
            for copies in keys.values():
                for copy in copies:
                    if (
                        copy.channel.connection is connection
                        and copy.channel.standalone
                    ):
                        copy.detached = True
                        self._wake(connection, copy.task_id, but=None)

    # ------------------------------------------------------------- watching

    @contextmanager
    def watch(self, channel: Channel, task_id: str) -> Generator[anyio.Event]:
        """An event set when another stream of the session hands a question on."""
        event = anyio.Event()
        key = (channel.connection, task_id)
        watchers = self._watchers.setdefault(key, {})
        watchers[event] = channel
        try:
            yield event
        finally:
            watchers.pop(event, None)
            if not watchers and self._watchers.get(key) is watchers:
                del self._watchers[key]

    def _wake(self, connection: Connection, task_id: str, but: Channel | None) -> None:
        for event, channel in self._watchers.get((connection, task_id), {}).items():
            if channel is not but:
                event.set()


def _same_stream(one: Channel, other: Channel) -> bool:
    """Whether two channels are one stream (pushes make a channel per offer)."""
    return one is other or (one.standalone and other.standalone)


def _takes_over(new: Channel, held: Channel) -> bool:
    """Whether ``new`` may ask a question ``held`` has open on the same session."""
    return not new.standalone and not held.standalone and new.number > held.number
