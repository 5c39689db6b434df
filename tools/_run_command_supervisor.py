"""The ``run_command`` supervisor: runs one program and takes it down with the server.

``run_command`` starts it as ``python -I -S <this file> FD PROGRAM [ARGS...]`` in a
new session, so it leads the process group that the program and everything the
program starts belong to. FD is the read end of a pipe whose only writer is the
server process.

1. It waits for one byte on FD. The server writes it once it has durably
   recorded which process group it started. End of file instead means the server
   died or gave up first: it exits with `NOT_STARTED` and runs nothing.
2. It starts the program (fork and exec, same process group) and waits for it.
3. Meanwhile a thread reads FD again. End of file means the server process is
   gone, however it died (``kill -9`` included): the kernel closes the pipe only
   when the last holder of its write end ends. It then kills the whole process
   group with SIGKILL, itself included.
4. When the program ends, it ends the same way (the same exit code, or killed
   by the same signal), so the server sees the program's own status.

Why a pipe and not ``prctl(PR_SET_PDEATHSIG)``: a parent-death signal fires when
the *thread* that forked the child ends, and which thread forks is the event
loop's business; it also reaches only the direct child. The pipe closes only
when the whole server process is gone, and the group kill reaches every process
that stayed in the group.

It ignores SIGTERM: the server's polite stop goes to the whole group and the
program decides how to react, while the supervisor stays to report how the
program ended. Standard library only; ``-I -S`` keeps the program's environment
(``PYTHONPATH`` and the like) from affecting it.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys

# Importing typing (or threading) would add a fifth to the supervisor's
# start-up, which every run_command call waits for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, NoReturn

#: The byte the server writes once it recorded the process group.
GO: Final = b"g"
#: Exit code when the server went away before saying "go" (nothing ran).
NOT_STARTED: Final = 125
#: Exit code when the program could not be executed (as a shell reports it).
EXEC_FAILED: Final = 127


def main(argv: list[str]) -> int:
    """Run the program named by ``argv[2:]`` under the control pipe ``argv[1]``."""
    control = int(argv[1])
    program = argv[2:]
    # A handler rather than SIG_IGN: exec resets handlers to the default action,
    # while an ignored signal would stay ignored in the program.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if os.read(control, 1) != GO:
        return NOT_STARTED
    pid = os.fork()
    if pid == 0:
        _exec(control, program)
    _thread.start_new_thread(_kill_group_when_server_is_gone, (control,))
    _, status = os.waitpid(pid, 0)
    return _end_like(status)


def _exec(control: int, program: list[str]) -> NoReturn:
    try:
        os.close(control)
        # Python ignores these at start-up, and ignored signals survive exec:
        # restore what any other program expects (as subprocess does).
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        os.execv(program[0], program)
    except BaseException as exc:  # anything: this is a forked child
        os.write(2, f"run_command: cannot start {program[0]}: {exc}\n".encode())
    os._exit(EXEC_FAILED)


def _kill_group_when_server_is_gone(control: int) -> None:
    while os.read(control, 1):  # nothing more is ever written: b"" is end of file
        pass
    os.killpg(0, signal.SIGKILL)  # 0: this process's own group


def _end_like(status: int) -> int:
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status)
    signum = os.WTERMSIG(status)
    import resource  # only here: most programs end with an exit code

    # The program may have dumped core; its supervisor has nothing to add.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL cannot be handled, so it already has its default action
    os.kill(os.getpid(), signum)
    return 128 + signum  # not reached for a signal whose default action kills


if __name__ == "__main__":
    sys.exit(main(sys.argv))
