"""The storage seam: the `Journal` contract, its records, and `open_journal`.

Backends live in sub-packages (`mcp_tasks.journal.sqlite`, and PostgreSQL);
only `open_journal` knows which exist.
"""

from __future__ import annotations

from mcp_tasks.journal._base import TERMINAL_GRACE_SECONDS, Journal, Settled
from mcp_tasks.journal._open import open_journal
from mcp_tasks.journal._records import (
    BY,
    BY_SERVER,
    Change,
    ChangeKind,
    Claimed,
    ClientLoad,
    FeedPage,
    HeldLease,
    Lease,
    NewTask,
    Phase,
    Recovery,
    Report,
    TaskEvent,
    TaskRow,
    by_client,
    by_operator,
)

__all__ = [
    "BY",
    "BY_SERVER",
    "TERMINAL_GRACE_SECONDS",
    "Change",
    "ChangeKind",
    "Claimed",
    "ClientLoad",
    "FeedPage",
    "HeldLease",
    "Journal",
    "Lease",
    "NewTask",
    "Phase",
    "Recovery",
    "Report",
    "Settled",
    "TaskEvent",
    "TaskRow",
    "by_client",
    "by_operator",
    "open_journal",
]
