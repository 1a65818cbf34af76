"""Exec a command that the kernel SIGTERMs when a given parent dies (Linux ``PR_SET_PDEATHSIG``).

``python -S exec_with_parent_death.py PARENT_PID COMMAND [ARG...]``

`shunter up` starts its children through this script instead of a ``preexec_fn``: a
``preexec_fn`` makes CPython fork the whole process and run Python in the child, and `up`
forks while its gRPC channel to the registry is busy. gRPC's fork handlers then skip
("Other threads are currently calling into gRPC, skipping fork() handlers"), the child
inherits gRPC state in the middle of a call, and it sometimes dies before exec
("epoll_wait error: Bad file descriptor", exit -6, or a SIGSEGV). Without a ``preexec_fn`` CPython
starts the child with vfork/exec, which runs no fork handlers and no Python in the copy;
this script then sets the parent-death signal in a fresh interpreter and execs the command
(the signal survives exec). Stdlib only, and run with ``-S``, so it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.stderr.write("usage: exec_with_parent_death.py PARENT_PID COMMAND [ARG...]\n")
        raise SystemExit(2)
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own symbols: libc's prctl is among them
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            raise SystemExit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
