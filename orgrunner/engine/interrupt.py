"""Interrupts (Ctrl-C, SIGTERM) that are never lost.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be. When
that is inside a finalizer or a weakref callback, which the garbage collector runs at any instant
(the plan phase's clients, connection pools and threads are freed at the end of planning), the
exception is reported as "Exception ignored" and lost: the run went on to the confirmation prompt
and blocked in `readline` with no interrupt left to end it.

So the handler also records the signal, and the run checks that record (`check`) at each step
between the end of planning and the start of apply; the prompt waits for the terminal *or* a
signal (`readline`: the signal module's wakeup pipe, written by the C-level handler whichever
thread the kernel delivered the signal to), so a signal that arrived before or during the wait
ends it at once. Only the main thread installs this (`install`, from the command line's `main`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from typing import IO

from orgrunner.errors import Terminated

_received: int | None = None  # the first stop signal received (SIGINT or SIGTERM)
_wakeup: int | None = None  # read end of the wakeup pipe, once installed


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: object) -> None:
    global _received
    if _received is None:
        _received = signum
    raise _interrupt(signum)


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt / Terminated, are remembered, and wake `readline`."""
    global _wakeup
    read_end, write_end = os.pipe()
    for fd in (read_end, write_end):
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    _wakeup = read_end
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def pending() -> bool:
    """True once a stop signal arrived, even if its exception was lost."""
    return _received is not None


def check() -> None:
    """Raise the interrupt that arrived, if one did (even one whose exception was lost)."""
    if _received is not None:
        raise _interrupt(_received)


def readline(stream: IO[str]) -> str:
    """One line from a terminal, unless an interrupt comes first (or came before): then it is raised."""
    while True:
        check()
        if _wakeup is None:  # not installed (orgrunner used as a library): a plain read
            return stream.readline()
        ready, _, _ = select.select([stream.fileno(), _wakeup], [], [])
        if _wakeup in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(_wakeup, 512):
                    pass
            continue  # a signal of another kind (SIGWINCH...) wakes it too: check and wait again
        return stream.readline()
