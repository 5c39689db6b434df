"""Leases: keeping this process's runs alive, and recovering runs that are gone.

The heartbeat renews the lease of every run this process is executing, and
only those (a run whose outcome could not be written yet is still executing).
A lease the journal refuses to renew belongs to a task that was cancelled or
taken over: its run is stopped. Then the heartbeat recovers tasks whose
worker is gone, by their tool's policy: a lease that ran out, or one whose
holder is a process of this machine that no longer exists (so a restart after
``kill -9`` resumes work at once instead of after the lease runs out). Of
several processes recovering one task, the journal lets exactly one succeed.
"""

from __future__ import annotations

import logging

from mcp_tasks.engine._engine import Engine
from mcp_tasks.engine._holder import is_certainly_gone
from mcp_tasks.engine._runs import Runs, StopReason

logger = logging.getLogger("mcp_tasks.engine")


async def renew(engine: Engine, runs: Runs) -> int:
    """Renew the leases of this process's live runs; stop runs that lost theirs."""
    live = runs.all()
    if not live:
        return 0
    expires_at = engine.now() + engine.settings.lease_seconds
    lost = await engine.journal.renew([run.lease for run in live], expires_at)
    for lease in lost:
        run = runs.holding(lease)
        if run is not None and not run.stopped:
            logger.warning(
                "task %s: lease of attempt %d is no longer this process's; "
                "stopping the run",
                lease.task_id,
                lease.attempt,
            )
            run.stop(StopReason.LEASE_LOST)
    return len(live) - len(lost)


async def recover_gone(engine: Engine, runs: Runs) -> int:
    """Recover every task whose run is gone; return how many this process took."""
    now = engine.now()
    recovered = 0
    for held in await engine.journal.held_leases():
        if runs.holding(held.lease) is not None:
            continue  # ours, and alive
        if held.expires_at < now:
            why = f"the lease of {held.lease.holder} ran out"
        elif is_certainly_gone(held.lease.holder):
            why = f"its process {held.lease.holder} is gone"
        else:
            continue
        spec = engine.tools.get(held.tool_name)
        if await engine.recover(held, spec, why):
            recovered += 1
    return recovered


async def heartbeat(engine: Engine, runs: Runs) -> None:
    """One heartbeat: renew our leases, then recover runs that are gone."""
    await renew(engine, runs)
    await recover_gone(engine, runs)
