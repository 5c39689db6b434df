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


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Refill rates of one budget; ``None`` means that dimension is unlimited."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def rates(self) -> dict[str, float]:
        """Per-minute rate of each limited dimension."""
        rates: dict[str, float] = {}
        if self.requests_per_minute is not None:
            rates[REQUESTS] = self.requests_per_minute
        if self.tokens_per_minute is not None:
            rates[TOKENS] = self.tokens_per_minute
        return rates


@dataclass(frozen=True, slots=True)
class Bucket:
    """One dimension's level at a moment. A fresh bucket starts full."""

    level: float
    updated_at: float

    @classmethod
    def full(cls, per_minute: float, now: float) -> Bucket:
        """A bucket holding a whole minute's allowance."""
        return cls(per_minute, now)

    def refilled(self, per_minute: float, now: float) -> Bucket:
        """The level at ``now``: refilled at ``per_minute``, never above a minute's worth."""
        elapsed = max(0.0, now - self.updated_at)
        level = min(per_minute, self.level + elapsed * per_minute / 60.0)
        return Bucket(level, max(now, self.updated_at))

    def wait_for(self, per_minute: float, amount: float) -> float:
        """Seconds until ``amount`` is available (0: now).

        Raises:
            ValueError: ``amount`` is more than the bucket can ever hold.
        """
        if amount > per_minute:
            raise ValueError(
                f"asked for {amount}, more than the budget's capacity {per_minute}"
            )
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / per_minute


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
        dimension: buckets.get(dimension, Bucket.full(rate, now)).refilled(rate, now)
        for dimension, rate in rates.items()
    }
    wait = max(
        (
            current[d].wait_for(rates[d], wanted.get(d, 0.0))
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
