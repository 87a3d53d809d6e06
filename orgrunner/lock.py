"""One run at a time per task and organization.

An advisory `flock` on a file under the state folder: the kernel releases it when the holding
process exits, however it exits, so a lock left by a killed process never blocks a later run.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from orgrunner.errors import OrgrunnerError
from orgrunner.statefiles import StateFolder

EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later


class Locked(OrgrunnerError):
    """Another orgrunner run of the same task and organization is in progress."""

    exit_code = EXIT_LOCKED


class RunLock:
    def __init__(self, state_dir: Path, organization_id: str, task: str, wait_seconds: float = 0) -> None:
        self.state = StateFolder(state_dir)
        self.path = state_dir / "locks" / f"{organization_id}.{task}.lock"
        self.wait_seconds = wait_seconds
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        self.state.folder("locks")
        handle = self.state.open(self.path, "r+")  # never through a planted link, never a FIFO
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    handle.close()
                    waited = f" after waiting {self.wait_seconds:g}s" if self.wait_seconds else ""
                    raise Locked(f"another run holds the lock {self.path} ({holder}){waited}; "
                                 "try again later or pass --wait-for-lock SECONDS") from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
