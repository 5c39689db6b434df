"""LISTEN for other processes' changes: a wake-up hint, never the source of truth.

One dedicated connection (never a pooled one: a pooler in transaction mode
would hand the LISTEN to whichever session it likes). Each notification calls
the journal's commit callbacks, so followers read the feed now rather than at
their next poll. When the connection fails it is opened again after a pause;
meanwhile, and for any notification lost, polling finds every change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus

from mcp_tasks.journal.postgres._schema import redacted

logger = logging.getLogger("mcp_tasks.journal")

#: The channel a process notifies after it committed changes.
CHANNEL: Final = "mcp_tasks_feed"
#: Pause before connecting again after the LISTEN connection failed.
RECONNECT_SECONDS: Final = 1.0


class Listener:
    """Calls ``notify`` whenever another process says it committed changes."""

    def __init__(
        self,
        url: str,
        kwargs: Mapping[str, Any],
        notify: Callable[[], None],
        own_payload: str,
    ) -> None:
        self._url = url
        self._kwargs = dict(kwargs)
        self._notify = notify
        self._own_payload = own_payload

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; started once the first LISTEN is in place (or failed)."""
        started = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, **self._kwargs)
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if not started:
                        started = True
                        task_status.started()
                    async for notification in conn.notifies():
                        # Our own commits have told our callbacks already.
                        if notification.payload != self._own_payload:
                            self._notify()
                finally:
                    with anyio.CancelScope(shield=True):
                        await conn.close()
            except psycopg.Error as exc:
                logger.warning(
                    "%s: LISTEN connection failed (%s); relying on polling until "
                    "it is back",
                    redacted(self._url),
                    exc,
                )
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(RECONNECT_SECONDS)
