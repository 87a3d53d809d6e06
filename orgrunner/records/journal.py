"""The journal: every applied change, written (and fsynced) the moment AWS applied it, with
the data needed to reverse it. One JSON lines file per run, read back by `orgrunner undo RUN_ID`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import IO

from orgrunner.cli.escape import visible
from orgrunner.errors import InputError, RecordError
from orgrunner.records.audit import injected_fault, now, scrub
from orgrunner.records.evidence import Chain
from orgrunner.records.statefiles import StateFolder
from orgrunner.task import Change

RUN_ID = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\Z")


def journal_dir(state_dir: Path) -> Path:
    return state_dir / "journal"


class Journal:
    """Append-only, one line per change outcome; safe to call from worker threads."""

    def __init__(self, state_dir: Path, run_id: str, task: str, task_version: str) -> None:
        self.state = StateFolder(state_dir)
        self.path = journal_dir(state_dir) / f"{run_id}.jsonl"
        self.run_id = run_id
        self.task = task
        self.task_version = task_version
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._chain = Chain("journal", run_id)  # each line carries the hash of the one before it

    def record(self, status: str, change: Change, error: str | None = None) -> None:
        """`applying` just before the call to AWS, then the outcome (applied, failed...) after it,
        so a process killed in between leaves the change marked as possibly applied. Returns only
        once the line is written and fsynced; raises RecordError otherwise (the caller must then
        not apply the change, or must report that it was applied without its record)."""
        entry = {"ts": now(), "run_id": self.run_id, "task": self.task, "task_version": self.task_version,
                 "status": status, "error": scrub(error) if error else None, "change": change.to_dict()}
        with self._lock:
            line = self._chain.line(entry)  # change data comes from AWS reads: kept exact
            data = (line + "\n").encode("utf-8")
            start = None
            try:
                if self._file is None:
                    self.state.folder("journal")  # never through a link, a regular file of ours
                    self._file = self.state.open(self.path, "a")
                fd = self._file.fileno()  # written unbuffered: nothing is left behind to be written later
                start = os.lseek(fd, 0, os.SEEK_END)
                injected_fault(self.path)
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError as exc:
                if self._file is not None and start is not None:
                    with contextlib.suppress(OSError):  # no torn line before the next record
                        os.ftruncate(self._file.fileno(), start)
                raise RecordError(f"journal {self.path}: {exc.strerror or exc}") from None
            self._chain.written(line)

    @property
    def head(self) -> str | None:
        """The hash of the last line written (the chain's head), None when nothing was journaled."""
        with self._lock:
            return self._chain.head if self._chain.length else None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read(state_dir: Path, run_id: str) -> tuple[str, str, list[Change]]:
    """(task name, task version, the changes the run applied) for `orgrunner undo`. A change whose
    outcome was never written (the process died during the call) counts as possibly applied: the
    task's `plan_undo` reads the live state and restores only what is really gone."""
    if not RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r}: expected the form 20261129T190000Z-1a2b3c (see the audit log)")
    path = journal_dir(state_dir) / f"{run_id}.jsonl"
    if not path.is_file():
        raise InputError(f"run {run_id}: no journal at {path} (that run applied nothing, or ran elsewhere)")
    with StateFolder(state_dir).open(path, "r") as handle:  # a planted link or FIFO is refused
        text = handle.read()
    lines = text.splitlines()
    task, version = "", ""
    outcomes: dict[str, tuple[str, Change]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            task, version = entry["task"], entry["task_version"]
            change = Change.from_dict(entry["change"])
        except (ValueError, KeyError, TypeError):
            if number == len(lines) and not text.endswith("\n"):
                print(visible(f"warning: {path}:{number}: the last line was torn by a crash; that change is left out"),
                      file=sys.stderr)
                continue
            raise InputError(f"{path}:{number}: unreadable journal line") from None
        key = json.dumps([change.account_id, change.region, change.resource, change.action])
        outcomes[key] = (entry["status"], change)
    applied = [change for status, change in outcomes.values() if status in ("applied", "applying")]
    unknown = sum(1 for status, _ in outcomes.values() if status == "applying")
    if unknown:
        print(f"warning: run {run_id}: {unknown} change(s) were being applied when the run stopped; "
              "treated as possibly applied", file=sys.stderr)
    return task, version, applied
