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


def new_holder() -> str:
    """A fresh holder name for this process."""
    return f"{machine_id() or 'unknown'}/{os.getpid()}/{secrets.token_hex(4)}"


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


def is_certainly_gone(holder: str, me: str) -> bool:
    """Whether the process that took this lease has surely exited.

    ``me`` is this process's own holder name. Only for holders on this machine
    (same kernel boot and pid namespace), and only when the kernel says no
    process has that pid, or the pid is ours under another name (an earlier
    process that had our pid). A pid reused by another process reads as alive:
    then the lease simply runs out as usual.
    """
    name = HolderName.parse(holder)
    here = machine_id()
    if holder == me or name is None or not here or name.machine != here:
        return False
    if name.pid == os.getpid():
        return True
    try:
        os.kill(name.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False
