"""What the engine tells the outside: every change of every task, from the feed.

Listeners (the bindings, and parts of the engine itself) receive each `Change`
of the journal's change feed once, in commit order, whichever process made
it. A listener must not block: it is called on the feed's path. It queues
whatever slow work it needs (reading the task, pushing to a client) itself.
"""

from __future__ import annotations

from typing import Protocol

from mcp_tasks.journal import Change, ChangeKind

__all__ = ["Change", "ChangeKind", "ChangeListener"]


class ChangeListener(Protocol):
    """Receives the change feed. Must not block, must not raise."""

    def task_changed(self, change: Change) -> None:
        """A task changed (already committed): see ``change.kind``."""
        ...
