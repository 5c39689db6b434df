"""Who holds a lease: a name for this process that another process can check.

A holder name is ``<machine>/<pid>/<random>``. ``<machine>`` identifies one
running kernel and process namespace (host name, boot id and pid namespace),
so a process that sees a lease held by a name with its own ``<machine>`` can
ask the kernel whether that pid is still alive. If it is not, the lease holder
is certainly gone and its tasks can be recovered at once instead of after the
lease runs out: that is what makes a restart after ``kill -9`` resume work
immediately on one machine. Across machines (or where the identity cannot be
read) only lease expiry counts.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@cache
def machine_id() -> str:
    """This kernel and pid namespace, as a short stable string ('' if unknown)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    seed = f"{socket.gethostname()}|{boot}|{namespace}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


#: Holder names of the engines running in this process now. Several engines
#: may share a process (embedded runtimes, tests): they share its pid, so the
#: pid alone cannot tell a live engine of this process from a dead one.
_live_here: set[str] = set()


def new_holder() -> str:
    """A fresh holder name for an engine of this process."""
    return f"{machine_id() or 'unknown'}/{os.getpid()}/{secrets.token_hex(4)}"


@contextmanager
def holding(holder: str) -> Generator[None]:
    """Mark ``holder`` as a live engine of this process while the block runs."""
    _live_here.add(holder)
    try:
        yield
    finally:
        _live_here.discard(holder)


@dataclass(frozen=True, slots=True)
class HolderName:
    """A parsed holder name."""

    machine: str
    pid: int

    @classmethod
    def parse(cls, holder: str) -> HolderName | None:
        """The parts of ``holder``, or None if it is not one of ours."""
        machine, _, rest = holder.partition("/")
        pid, _, _ = rest.partition("/")
        if not machine or not pid.isdigit():
            return None
        return cls(machine, int(pid))


def is_certainly_gone(holder: str) -> bool:
    """Whether the engine that took this lease has surely stopped.

    Only for holders on this machine (same kernel boot and pid namespace):
    a holder of this process is gone when it is not one of its live engines;
    one of another process when the kernel says that process does not exist
    (or is a zombie nobody reaped). A pid reused by another process reads as
    alive: then the lease simply runs out as usual.
    """
    name = HolderName.parse(holder)
    here = machine_id()
    if name is None or not here or name.machine != here:
        return False
    if name.pid == os.getpid():
        return holder not in _live_here
    try:
        os.kill(name.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return _is_zombie(name.pid)


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped (Linux ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
