"""Letting a running engine's tasks run until each waits on something.

`anyio.wait_all_tasks_blocked` does this by looking at every task and, when
one is runnable, sleeping 0.1 s before it looks again. A running engine has
tasks that wake on timers of their own (the change feed every 50 ms, idle
dispatcher wake-ups); when the machine is loaded, many timers come due in the
same loop turn, and a look that falls in the turn after such a wake-up sees
the woken task as runnable. With a 0.1 s period against the feed's 50 ms the
two lock in phase, and the wait was seen not to return for 10–15 s in CI.

`settle_tasks` looks every `POLL_SECONDS` instead, so one unlucky look costs
5 ms, not 0.1 s, and a phase lock cannot last. It is bounded: if the loop's
other tasks are still runnable after ``bound`` seconds it warns (an error in
this suite), naming the tasks it found runnable most often, so a task that
never blocks shows up by name. Tests synchronise on events and journal round
trips; this only lets queued work run before them.
"""

from __future__ import annotations

import asyncio
import warnings
from collections import Counter

import anyio

#: How long to let the loop's other tasks run before giving up.
BOUND_SECONDS = 2.0

#: How long to wait between two looks at the loop's tasks.
POLL_SECONDS = 0.005


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
    seen: Counter[str] = Counter()
    await anyio.lowlevel.checkpoint()
    with anyio.move_on_after(bound) as scope:
        while runnable := _runnable():
            seen.update(runnable)
            await anyio.sleep(POLL_SECONDS)
    if scope.cancelled_caught:
        warnings.warn(
            f"tasks still runnable after {bound:g} s; most often seen runnable: "
            f"{seen.most_common(5)}",
            RuntimeWarning,
            stacklevel=2,
        )
