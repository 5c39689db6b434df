"""`RequestLimiter`: how fast each client may make task requests, across processes.

The MCP task specs ask servers to rate-limit task operations (against
denial of service and id enumeration) and allow slowing a client that polls
faster than its ``pollInterval``. Each client's allowance is a token bucket
in the journal (a budget named ``requests:<client>``, refilled at the
client's ``requests_per_second`` up to its ``request_burst``), shared by
every process, so a client spread over several processes gets one rate.

Taking one token per request from the journal would put a write in front of
every poll. Instead a process takes a small **lease** of tokens at once (a
tenth of a second's worth), serves requests from it, and goes back to the
journal when it runs out; a lease not used within `LEASE_SECONDS` is
dropped. Across N processes a client can so get at most N leases beyond its
rate. When the journal says the bucket is empty, the process remembers until
when, so a flooding client costs no journal write per refused request.

A request that finds no token **waits** for the next one if that comes within
``request_delay_seconds``: a client polling too fast is slowed down, holding
no worker and writing nothing while it waits. Otherwise, or when as many of
the client's requests as its burst are waiting already, it is refused with
`RateLimitedError`, which says when to retry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, final

import anyio

from mcp_tasks._budgets import BudgetLimits
from mcp_tasks._config import RequestLimit
from mcp_tasks._exceptions import RateLimitedError
from mcp_tasks._model import OwnerId
from mcp_tasks.engine._engine import Engine

#: What share of a second's allowance a process takes from the journal at once,
#: and how long it may keep what it did not use.
LEASE_SECONDS: Final = 0.1
#: Budget names of request buckets start with this (reserved in the config).
REQUEST_BUDGET_PREFIX: Final = "requests:"
#: Clients whose leases a process remembers; idle ones beyond are forgotten.
MAX_REMEMBERED_CLIENTS: Final = 10_000


@dataclass(eq=False)
class _Lease:
    """What this process holds of one client's allowance."""

    tokens: float = 0.0
    taken_at: float = -math.inf
    #: The journal said the bucket is empty until then: no need to ask again.
    empty_until: float = -math.inf
    waiting: int = 0
    lock: anyio.Lock = field(default_factory=anyio.Lock)


def request_budget(limit: RequestLimit) -> BudgetLimits:
    """The budget that holds a client's request allowance."""
    return BudgetLimits(
        requests_per_minute=limit.per_second * 60.0, requests_burst=limit.burst
    )


@final
class RequestLimiter:
    """Admits each client's task requests at its rate (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._leases: dict[OwnerId, _Lease] = {}

    async def admit(self, owner_id: OwnerId) -> None:
        """Return once the request may go on; raise `RateLimitedError` if it may not."""
        settings = self._engine.settings
        limit = settings.request_limit_for(owner_id)
        if limit is None:
            return
        lease = self._lease(owner_id)
        if lease.waiting >= limit.burst:
            # As many requests waiting as the client may make at once: it is
            # not waiting for answers, it is flooding.
            retry = max(lease.empty_until - self._engine.now(), 1.0 / limit.per_second)
            raise RateLimitedError(owner_id, limit.per_second, retry)
        lease.waiting += 1
        try:
            deadline = self._engine.now() + settings.request_delay_seconds
            while True:
                async with lease.lock:
                    left = deadline - self._engine.now()
                    wait = await self._take(owner_id, lease, limit, left)
                if wait <= 0:
                    return
                # Durations compared, not instants: a wait too short to move a
                # large timestamp must still count as a wait.
                if wait > deadline - self._engine.now():
                    raise RateLimitedError(owner_id, limit.per_second, wait)
                await anyio.sleep(wait)
        finally:
            lease.waiting -= 1

    async def _take(
        self, owner_id: OwnerId, lease: _Lease, limit: RequestLimit, left: float
    ) -> float:
        """Take one token for a request: 0, or the seconds to wait for one.

        With the bucket empty, a request that may wait (``left`` seconds)
        waits for a whole lease's worth, so a client polling faster than its
        rate costs the journal two budget writes per lease, not several per
        request; only a request that cannot wait that long takes a single token.
        """
        now = self._engine.now()
        if now - lease.taken_at > LEASE_SECONDS:
            lease.tokens = 0.0  # stale: give other processes their share
        if lease.tokens >= 1:
            lease.tokens -= 1
            return 0.0
        if now < lease.empty_until:
            return lease.empty_until - now
        name = REQUEST_BUDGET_PREFIX + owner_id
        budget = request_budget(limit)
        chunk = max(1.0, min(limit.burst, math.floor(limit.per_second * LEASE_SECONDS)))
        wait = await self._engine.take_requests(name, budget, chunk)
        if wait <= 0:
            lease.tokens, lease.taken_at = chunk - 1, now
            return 0.0
        if chunk > 1 and wait > left:
            wait = await self._engine.take_requests(name, budget, 1.0)
            if wait <= 0:
                return 0.0
        lease.empty_until = now + wait
        return wait

    def _lease(self, owner_id: OwnerId) -> _Lease:
        lease = self._leases.get(owner_id)
        if lease is not None:
            return lease
        if len(self._leases) >= MAX_REMEMBERED_CLIENTS:
            # Forgetting an idle client's lease is always safe: its unused
            # tokens are dropped, and the journal still holds its bucket.
            idle = [k for k, v in self._leases.items() if v.waiting == 0]
            for key in idle[: len(idle) // 2 or 1]:
                del self._leases[key]
        lease = self._leases[owner_id] = _Lease()
        return lease
