"""Letting a running engine's tasks run until each waits on something.

`anyio.wait_all_tasks_blocked` returns once every other task of the event loop
waits on something; in a busy full-suite run it was seen not to return for
10–15 s inside an idle engine (twice, in CI only; not reproduced alone, not
even under a CPU hog). `settle_tasks` bounds that wait and, when it runs out,
warns with the tasks that were still runnable, so the cause shows in the
suite's warnings summary instead of as a timeout. Tests synchronise on events
and journal round trips; this only lets queued work run before them.
"""

from __future__ import annotations

import asyncio
import warnings

import anyio

#: How long to let the loop's other tasks run before going on regardless.
BOUND_SECONDS = 2.0


def _runnable() -> list[str]:
    me = asyncio.current_task()
    names: list[str] = []
    for task in asyncio.all_tasks():
        waiter = getattr(task, "_fut_waiter", None)
        if task is not me and (waiter is None or waiter.done()):
            names.append(repr(task.get_coro()))
    return names


async def settle_tasks(bound: float = BOUND_SECONDS) -> None:
    """Wait (at most ``bound`` seconds) until every other task is blocked."""
    with anyio.move_on_after(bound) as scope:
        await anyio.wait_all_tasks_blocked()
    if scope.cancelled_caught:
        warnings.warn(
            f"tasks still runnable after {bound:g} s: {_runnable()[:10]}",
            RuntimeWarning,
            stacklevel=2,
        )
