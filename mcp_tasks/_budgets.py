"""Shared rate-limit budgets: token buckets for upstream APIs.

A budget (for example an upstream model provider's requests per minute and
tokens per minute) is shared by every task of the process. A tool takes from
it before calling upstream; when the budget is empty the task is parked until
the exact moment enough has refilled, holding no worker, so upstream never
sees the request that would have been answered 429.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import final


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Refill rates of one budget; ``None`` means that dimension is unlimited."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


@dataclass(slots=True)
class _Bucket:
    rate_per_second: float
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate_per_second)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        if amount > self.capacity:
            raise ValueError(
                f"asked for {amount}, more than the budget's capacity {self.capacity}"
            )
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate_per_second


@final
@dataclass
class Budget:
    """A named budget with a request bucket and a token bucket."""

    name: str
    limits: BudgetLimits
    _buckets: dict[str, _Bucket] = field(default_factory=lambda: dict[str, _Bucket]())

    def _bucket(
        self, dimension: str, per_minute: float | None, now: float
    ) -> _Bucket | None:
        if per_minute is None:
            return None
        bucket = self._buckets.get(dimension)
        if bucket is None:
            # Start full: a fresh process may spend a minute's budget at once.
            bucket = _Bucket(per_minute / 60.0, per_minute, per_minute, now)
            self._buckets[dimension] = bucket
        bucket.refill(now)
        return bucket

    def try_take(self, now: float, requests: float = 1, tokens: float = 0) -> float:
        """Take ``requests`` and ``tokens`` if available now; return 0.

        Otherwise take nothing and return the seconds until both are available.
        """
        wanted = [
            (self._bucket("requests", self.limits.requests_per_minute, now), requests),
            (self._bucket("tokens", self.limits.tokens_per_minute, now), tokens),
        ]
        wait = max(
            (b.wait_for(n) for b, n in wanted if b is not None and n > 0), default=0.0
        )
        if wait > 0:
            return wait
        for bucket, amount in wanted:
            if bucket is not None:
                bucket.level -= amount
        return 0.0

    def available_in(self, now: float, requests: float = 1, tokens: float = 0) -> float:
        """Seconds until ``requests`` and ``tokens`` could be taken (0: now)."""
        wanted = [
            (self._bucket("requests", self.limits.requests_per_minute, now), requests),
            (self._bucket("tokens", self.limits.tokens_per_minute, now), tokens),
        ]
        return max(
            (b.wait_for(n) for b, n in wanted if b is not None and n > 0), default=0.0
        )
