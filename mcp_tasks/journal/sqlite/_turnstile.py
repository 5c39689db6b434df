"""Writers of one journal file take turns through a blocking file lock.

SQLite lets one writer in at a time and makes the others *poll*: a
``BEGIN IMMEDIATE`` that finds the write lock taken sleeps 1, 2, 5, 10 … ms
and tries again. With several processes writing one file, those sleeps, not
the writes, set the pace. A blocking ``flock`` on a sidecar file queues the
writers in the kernel instead, and the next one wakes the moment the lock is
released.

Only performance depends on it. SQLite's own lock still guards every write
(the turnstile is taken *before* ``BEGIN IMMEDIATE``, which still waits its
turn), so a process that does not use the turnstile, or a hard link that
names the file differently, is merely slower, never wrong.

The sidecar is ``<real path of the journal>-turn``: a symlinked path reaches
the same one. It is never the database file itself: closing any descriptor
of that file would drop SQLite's POSIX locks held by this process.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import final


@final
class Turnstile:
    """A blocking, cross-process mutex for one journal's writers."""

    def __init__(self, journal_path: Path) -> None:
        real = Path(os.path.realpath(journal_path))
        self.path = real.with_name(real.name + "-turn")
        self._fd: int | None = None

    def open(self) -> None:
        """Create or open the sidecar (raises OSError when it cannot)."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def enter(self) -> None:
        """Wait (blocking this thread) until no other writer holds the turn."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def leave(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
