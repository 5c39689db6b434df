"""CPU time of a local PostgreSQL server: the postmaster and its children."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from ._harness import cpu_seconds


class PgCpu:
    """Sums the CPU of a local server's processes (from /proc); 0 when not local.

    Backends that exit between two readings take their CPU with them, so this
    reads low when connections churn (the journal's pools keep theirs open).
    """

    def __init__(self, url: str) -> None:
        self.postmaster: int | None = None
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        pidfile = Path(str(row[0]) if row else "") / "postmaster.pid"
        try:
            self.postmaster = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.postmaster = None

    def seconds(self) -> float:
        """CPU seconds used so far by the postmaster and its live children."""
        if self.postmaster is None:
            return 0.0
        total = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if int(entry) == self.postmaster or ppid == self.postmaster:
                    total += cpu_seconds(int(entry))
            except (OSError, ValueError):
                continue  # the process ended meanwhile
        return total
