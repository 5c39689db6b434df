"""Shared rate-limit budgets: the token-bucket arithmetic, pure.

A budget (for example an upstream model provider's requests per minute and
tokens per minute) is shared by every task of every process on one journal.
Its buckets live in the journal, which runs this arithmetic inside the write
transaction that takes from them, so several processes never spend more than
the configured rate. A task that finds the budget empty is parked until the
exact moment enough has refilled, holding no worker.

This module imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The dimensions of a budget, as stored.
REQUESTS: Final = "requests"
TOKENS: Final = "tokens"
#: Every bucket refills within this (a minute's allowance refills in a minute;
#: a request burst is at most an hour's rate), so one untouched this long is
#: full and the journal may forget it.
IDLE_BUCKET_SECONDS: Final = 3600.0
#: Relative shortfall treated as none (floating-point refill arithmetic).
_ROUNDING: Final = 1e-9


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Refill rates of one budget; ``None`` means that dimension is unlimited.

    A bucket holds at most a minute's allowance, unless ``requests_burst``
    caps the requests dimension lower (request-rate limits allow a short
    burst, not a minute's worth at once).
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    requests_burst: float | None = None

    def rates(self) -> dict[str, float]:
        """Per-minute rate of each limited dimension."""
        rates: dict[str, float] = {}
        if self.requests_per_minute is not None:
            rates[REQUESTS] = self.requests_per_minute
        if self.tokens_per_minute is not None:
            rates[TOKENS] = self.tokens_per_minute
        return rates

    def capacity(self, dimension: str) -> float:
        """The most ``dimension``'s bucket holds (a limited dimension only)."""
        if dimension == REQUESTS and self.requests_burst is not None:
            return self.requests_burst
        return self.rates()[dimension]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One dimension's level at a moment. A fresh bucket starts full."""

    level: float
    updated_at: float

    @classmethod
    def full(cls, capacity: float, now: float) -> Bucket:
        """A bucket holding its whole capacity."""
        return cls(capacity, now)

    def refilled(self, per_minute: float, capacity: float, now: float) -> Bucket:
        """The level at ``now``: refilled at ``per_minute``, never above ``capacity``."""
        elapsed = max(0.0, now - self.updated_at)
        level = min(capacity, self.level + elapsed * per_minute / 60.0)
        return Bucket(level, max(now, self.updated_at))

    def wait_for(self, per_minute: float, capacity: float, amount: float) -> float:
        """Seconds until ``amount`` is available (0: now).

        Raises:
            ValueError: ``amount`` is more than the bucket can ever hold.
        """
        if amount > capacity:
            raise ValueError(
                f"asked for {amount}, more than the budget's capacity {capacity}"
            )
        missing = amount - self.level
        # A refill computed to the very moment can fall short by a rounding
        # error; a wait of 1e-15 s would be absorbed by the clock and retried
        # forever.
        return 0.0 if missing <= _ROUNDING * amount else missing * 60.0 / per_minute


def take(
    buckets: dict[str, Bucket],
    limits: BudgetLimits,
    wanted: dict[str, float],
    now: float,
    *,
    commit: bool,
) -> tuple[float, dict[str, Bucket]]:
    """Take ``wanted`` from ``buckets`` (missing ones start full) if all have room.

    Returns the seconds to wait (0 if taken) and the buckets to store: refilled
    and, when ``commit`` and nothing must wait, with the amounts taken.
    """
    rates = limits.rates()
    current = {
        dimension: buckets.get(
            dimension, Bucket.full(limits.capacity(dimension), now)
        ).refilled(rate, limits.capacity(dimension), now)
        for dimension, rate in rates.items()
    }
    wait = max(
        (
            current[d].wait_for(rates[d], limits.capacity(d), wanted.get(d, 0.0))
            for d in rates
            if wanted.get(d, 0.0) > 0
        ),
        default=0.0,
    )
    if wait > 0 or not commit:
        return wait, current
    taken = {
        d: Bucket(bucket.level - wanted.get(d, 0.0), bucket.updated_at)
        for d, bucket in current.items()
    }
    return 0.0, taken
