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
    Resealed,
    TaskEvent,
    TaskRow,
    by_client,
    by_operator,
)
from mcp_tasks.journal._sealing import NO_SEALING, Keyring, Sealing, sealing_from

__all__ = [
    "BY",
    "BY_SERVER",
    "NO_SEALING",
    "TERMINAL_GRACE_SECONDS",
    "Change",
    "ChangeKind",
    "Claimed",
    "ClientLoad",
    "FeedPage",
    "HeldLease",
    "Journal",
    "Keyring",
    "Lease",
    "NewTask",
    "Phase",
    "Recovery",
    "Report",
    "Resealed",
    "Sealing",
    "Settled",
    "TaskEvent",
    "TaskRow",
    "by_client",
    "by_operator",
    "open_journal",
    "sealing_from",
]
