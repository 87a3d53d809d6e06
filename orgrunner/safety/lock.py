"""Runs of one task on one organization: one writer at a time, dry runs never in a writer's way.

Two advisory `flock`s per task and organization, under the state folder's `locks/`; the kernel
releases them when the holding process exits, however it exits, so a lock left by a killed
process never blocks a later run.

- `<org>.<task>.lock`, the writers' lock: an armed run, `apply` or `undo --arm` holds it
  exclusively for the whole run (plan, prompt, apply), so two writers never overlap. Dry runs do
  not take it: an armed run waiting at its prompt blocks no dry run.
- `<org>.<task>.apply.lock`, the apply lock: dry runs (and `--plan-out`) hold it shared, so any
  number run together; a writer holds it exclusively only while it applies (from the confirmation
  to the end of apply), so a dry run never plans a half-applied state, and a writer waits (up to
  `--wait-for-lock`, at least a minute) for the dry runs in flight before it applies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from orgrunner.errors import OrgrunnerError
from orgrunner.records.statefiles import StateFolder

EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later
APPLY_WAIT_MIN = 60.0  # seconds a confirmed writer waits at least for the dry runs in flight


class Locked(OrgrunnerError):
    """Another orgrunner run of the same task and organization is in progress."""

    exit_code = EXIT_LOCKED


def _open(state: StateFolder, path: Path) -> IO[str]:
    """The one place a lock file is opened: never through a planted link, never a FIFO."""
    state.folder("locks")
    return state.open(path, "r+")


def _take(handle: IO[str], path: Path, exclusive: bool, wait_seconds: float, what: str) -> None:
    """flock `handle`, retrying until `wait_seconds` have passed; then raise Locked naming the holder."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                waited = f" after waiting {wait_seconds:g}s" if wait_seconds else ""
                raise Locked(f"{what} holds the lock {path} ({holder}){waited}; "
                             "try again later or pass --wait-for-lock SECONDS") from None
            time.sleep(0.2)


def _mark(handle: IO[str], role: str) -> None:
    """Name the exclusive holder in the file, for the message of whoever finds it busy."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} {role} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    handle.flush()


class RunLock:
    def __init__(self, state_dir: Path, organization_id: str, task: str, wait_seconds: float = 0,
                 writer: bool = True) -> None:
        self.state = StateFolder(state_dir)
        self.path = state_dir / "locks" / f"{organization_id}.{task}.lock"
        self.apply_path = state_dir / "locks" / f"{organization_id}.{task}.apply.lock"
        self.wait_seconds = wait_seconds
        self.writer = writer
        self._held: list[IO[str]] = []

    def __enter__(self) -> RunLock:
        path = self.path if self.writer else self.apply_path  # writers exclusive, dry runs shared
        handle = _open(self.state, path)
        try:
            _take(handle, path, self.writer, self.wait_seconds,
                  "another armed run, apply or undo" if self.writer else "a run applying changes")
        except BaseException:
            handle.close()
            raise
        if self.writer:
            _mark(handle, "(writer)")
        self._held.append(handle)
        return self

    @contextlib.contextmanager
    def applying(self) -> Iterator[None]:
        """A writer's apply phase: the apply lock exclusively, once the dry runs in flight are done."""
        if not self.writer:
            raise RuntimeError("a dry run does not apply")
        handle = _open(self.state, self.apply_path)
        try:
            _take(handle, self.apply_path, True, max(self.wait_seconds, APPLY_WAIT_MIN),
                  "a dry run of this task still in progress (nothing applied)")
            _mark(handle, "(applying)")
            yield
        finally:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._held:
            if self.writer:
                with contextlib.suppress(OSError):
                    handle.truncate(0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
        self._held = []
