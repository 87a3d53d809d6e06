"""Records as evidence: hash chains in the journal and the audit log, and `orgrunner verify`.

The idea is CloudTrail's log file integrity validation. Every journal line and every audit line
carries `prev`, the SHA-256 of the line written before it (the first line of a chain carries a
genesis hash naming the run), so an edited, removed, inserted or reordered line breaks the chain.

- The journal: one chain per file (one file per run). Its head, the hash of its last line, is
  written into the audit log's `run-end` as `journal_head`, so a line added to or cut from the
  end of the journal shows too.
- The audit log is shared by every run on the host and rotated by concurrent-log-handler: one
  chain per run within the shared file. A run's lines are written by one process (in order,
  under its lock), so its chain needs no reading back of other processes' lines, and it stays
  whole across rotation: `verify` collects the run's lines from the rotated files, oldest first.
  (A chain across the whole file would need the head re-read under the handler's lock at every
  write, and a rotation would cut it.) What a per-run chain cannot show is a run deleted whole
  from the audit log; then its journal names a run the audit log does not know, and undo refuses.
- For each applied change the audit log records the SHA-256 of the change's canonical JSON
  (`sha256`, `Change.digest`); `verify` checks that the journal's changes are exactly those.

`verify` returns one line per break; `orgrunner undo` refuses a run with any.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orgrunner.records.statefiles import StateFolder
from orgrunner.task import Change


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def digest(change: dict[str, Any]) -> str:
    """SHA-256 of a journal change's canonical JSON, as `Change.digest` computes it for the audit
    log's `sha256` (the same function: the change rebuilt, so both sides hash the same thing)."""
    return Change.from_dict(change).digest()


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def genesis(kind: str, run_id: str) -> str:
    """The `prev` of a chain's first line: names the chain, so a line cannot move to another run."""
    return line_hash(f"orgrunner {kind} {run_id}")


class Chain:
    """The running head of one chain (the caller serialises `line` and `written` calls)."""

    def __init__(self, kind: str, run_id: str) -> None:
        self.head = genesis(kind, run_id)
        self.length = 0

    def line(self, record: dict[str, Any], render: Callable[[dict[str, Any]], str] | None = None) -> str:
        """The record as its line, with `prev` set to the head."""
        return (render or _render)({**record, "prev": self.head})

    def written(self, line: str) -> None:
        """The line is in the file: it is the new head (a line that failed to be written is not)."""
        self.head = line_hash(line)
        self.length += 1


def _render(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str)


@dataclass
class _Lines:
    records: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (record, its line)
    unreadable: int = 0


def _read(path: Path, state: StateFolder | None) -> list[str]:
    handle = state.open(path, "r") if state is not None else path.open(encoding="utf-8")
    with handle:
        return handle.read().split("\n")


def audit_files(audit_log: Path) -> list[Path]:
    """The audit log and its rotated files, oldest first (audit.jsonl.N ... .1, audit.jsonl)."""
    rotated = []
    for candidate in audit_log.parent.glob(audit_log.name + ".*"):
        suffix = candidate.name[len(audit_log.name) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), candidate))
    return [p for _, p in sorted(rotated, reverse=True)] + ([audit_log] if audit_log.exists() else [])


def _audit_lines(audit_log: Path, run_id: str, state: StateFolder | None) -> _Lines:
    found = _Lines()
    for path in audit_files(audit_log):
        for line in _read(path, state if state is not None and path.parent == state.root else None):
            if not line.strip() or run_id not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                found.unreadable += 1
                continue
            if isinstance(record, dict) and record.get("run_id") == run_id:
                found.records.append((record, line))
    return found


def _chain_breaks(where: str, kind: str, run_id: str, records: list[tuple[dict[str, Any], str]]) -> list[str]:
    breaks = []
    expected = genesis(kind, run_id)
    for number, (record, line) in enumerate(records, 1):
        if record.get("prev") != expected:
            breaks.append(f"{where}: record {number} of run {run_id} does not follow the one before it "
                          "(a record was edited, removed, inserted or reordered)")
        expected = line_hash(line)
    return breaks


@dataclass
class Verdict:
    run_id: str
    breaks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: int = 0
    audit_records: int = 0


def verify(state: StateFolder, journal_path: Path, audit_log: Path, run_id: str) -> Verdict:
    """Check run `run_id`'s journal against its audit-log record; every break is one line."""
    verdict = Verdict(run_id)
    journal: list[tuple[dict[str, Any], str]] = []
    if journal_path.exists() or journal_path.is_symlink():
        lines = _read(journal_path, state)
        torn = lines[-1] if lines and lines[-1] != "" else None  # written without its newline: a crash
        for number, line in enumerate(lines[:-1] if lines else [], 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or record.get("run_id") != run_id:
                    raise ValueError
            except ValueError:
                verdict.breaks.append(f"journal {journal_path.name}:{number}: not a record of run {run_id}")
                continue
            journal.append((record, line))
        if torn is not None:
            verdict.notes.append(f"journal {journal_path.name}: the last line was torn by a crash; left out")
    audit = _audit_lines(audit_log, run_id, state)
    verdict.audit_records = len(audit.records)
    if not audit.records:
        verdict.breaks.append(f"run {run_id}: the audit log {audit_log} has no record of this run")
        return verdict
    verdict.breaks += _chain_breaks(f"journal {journal_path.name}", "journal", run_id, journal)
    verdict.breaks += _chain_breaks(f"audit log {audit_log.name}", "audit", run_id, audit.records)
    events = [record for record, _ in audit.records]
    if events[0].get("event") != "run-start":
        verdict.breaks.append(f"run {run_id}: the audit log lacks the run's start")
    ends = [e for e in events if e.get("event") == "run-end"]
    journal_head = line_hash(journal[-1][1]) if journal else None
    if ends:
        if ends[-1].get("journal_head") != journal_head:
            verdict.breaks.append(f"journal {journal_path.name}: its last record is not the one the audit log's "
                                  "run-end names (records were added or removed after the run)")
    else:
        verdict.notes.append(f"run {run_id}: the audit log has no run-end (the run was killed or is running)")
    applied = Counter((e.get("status"), e.get("sha256")) for e in events if e.get("event") == "applied")
    seen = {e.get("sha256") for e in events if e.get("event") in ("planned", "applied")}
    outcomes: Counter[tuple[Any, Any]] = Counter()
    for number, (record, _) in enumerate(journal, 1):
        change = record.get("change")
        if not isinstance(change, dict):
            verdict.breaks.append(f"journal {journal_path.name}:{number}: a record without its change")
            continue
        try:
            mark = digest(change)
        except (TypeError, ValueError):
            verdict.breaks.append(f"journal {journal_path.name}:{number}: not a change orgrunner wrote")
            continue
        if record.get("status") == "applying":
            if mark not in seen:
                verdict.breaks.append(f"journal {journal_path.name}:{number}: a change the audit log never "
                                      f"recorded for run {run_id} ({change.get('resource')})")
        else:
            outcomes[(record.get("status"), mark)] += 1
    verdict.changes = sum(outcomes.values())
    for (status, seen_mark), count in sorted((outcomes - applied).items(), key=repr):
        verdict.breaks.append(f"journal {journal_path.name}: {count} {status} change(s) the audit log did not "
                              f"record as such (digest {str(seen_mark)[:12]}...)")
    for (status, seen_mark), count in sorted((applied - outcomes).items(), key=repr):
        verdict.breaks.append(f"audit log: {count} {status} change(s) of run {run_id} missing from the journal "
                              f"(digest {str(seen_mark)[:12]}...)")
    return verdict
