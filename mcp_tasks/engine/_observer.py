"""What the engine tells observers of this process's work (metrics, for one).

The engine calls an `EngineObserver` when this process starts a run and when
it ends a task (finished, failed or cancelled). These are per-process events:
every process reports what it did itself, and gauges of the whole journal are
read from the journal, not added up from these. Observers run on the event
loop inside the engine's writes, so they must be quick and must not raise.
"""

from __future__ import annotations

from typing import Protocol


class EngineObserver(Protocol):
    """Hears what this process's engine did; every method is optional work."""

    def run_started(self, tool: str, queue_wait_seconds: float | None) -> None:
        """A run was claimed; ``queue_wait_seconds``: submit to first start.

        None for later attempts (a retry, a resumed task, a recovered one).
        """
        ...

    def task_ended(
        self, owner_id: str, tool: str, status: str, run_seconds: float | None
    ) -> None:
        """A task ended through this process.

        ``status`` is ``completed``, ``failed``, ``cancelled``, or
        ``tool_error``: completed with a tool error result (``isError``).

        ``run_seconds`` is how long its last attempt ran (None for a cancel,
        which is recorded by whichever process was asked).
        """
        ...
