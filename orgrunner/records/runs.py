"""Past runs found again: `orgrunner runs` lists them from the audit log (what an auditor reads),
`orgrunner runs show RUN_ID` lists what one run changed, from its journal (what undo reads).

Both read tolerantly: fields they do not know (a hash chain, say) are ignored, and a line that is
not a JSON object (a line torn by a crash) is skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orgrunner.errors import InputError
from orgrunner.records.journal import RUN_ID, journal_dir


@dataclass
class RunRecord:
    run_id: str
    started: str = ""
    operator: str = ""
    task: str = ""
    mode: str = ""
    command: str = ""
    status: str = "unfinished"
    applied: int = 0
    failed: int = 0
    accounts_changed: set[str] = field(default_factory=set)
    undoable: bool = False
    baseline_id: str | None = None  # the baseline this run is a task of (`orgrunner baseline`)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started": self.started, "operator": self.operator, "task": self.task,
                "mode": self.mode, "command": self.command, "status": self.status, "applied": self.applied,
                "failed": self.failed, "accounts_changed": sorted(self.accounts_changed), "undoable": self.undoable,
                "baseline_id": self.baseline_id}


def audit_files(path: Path) -> list[Path]:
    """The audit log and its rotated backups (audit.jsonl.1 is the newest backup), oldest first."""
    backups = [p for p in path.parent.glob(path.name + ".*") if re.fullmatch(r"\d+", p.name.rsplit(".", 1)[-1])]
    backups.sort(key=lambda p: int(p.name.rsplit(".", 1)[-1]), reverse=True)
    return [*backups, *([path] if path.is_file() else [])]


def _records(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            with path.open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and isinstance(record.get("run_id"), str):
                        yield record
        except OSError as exc:
            raise InputError(f"audit log {path}: {exc.strerror or exc}") from None


def recent(audit_log: Path, state: Path, limit: int = 20, baseline_id: str | None = None) -> list[RunRecord]:
    """The last `limit` runs in the audit log, newest first (only the tasks of `baseline_id`, when given)."""
    runs: dict[str, RunRecord] = {}
    for record in _records(audit_files(audit_log)):
        run = runs.get(record["run_id"])
        event = record.get("event")
        if event == "run-start":
            run = runs[record["run_id"]] = RunRecord(
                run_id=record["run_id"], started=str(record.get("ts", "")), operator=str(record.get("operator", "")),
                task=str(record.get("task", "")), mode=str(record.get("mode", "")),
                command=str(record.get("command", "")),
                baseline_id=str(record["baseline_id"]) if record.get("baseline_id") else None)
        if run is None:
            continue
        if event == "run-end":
            run.status = str(record.get("status", ""))
        elif event == "applied":
            if record.get("status") == "applied":
                run.applied += 1
                run.accounts_changed.add(str(record.get("account", "")))
            elif record.get("status") == "failed":
                run.failed += 1
    chosen = [r for r in runs.values() if baseline_id is None or r.baseline_id == baseline_id]
    newest = sorted(chosen, key=lambda r: (r.started, r.run_id), reverse=True)[:limit]
    for run in newest:  # an undo is not itself undone (its journal's task is the reversal)
        run.undoable = (run.applied > 0 and not run.command.startswith("undo ")
                        and (journal_dir(state) / f"{run.run_id}.jsonl").is_file())
    return newest


def find(audit_log: Path, state: Path, run_id: str) -> RunRecord | None:
    for run in recent(audit_log, state, limit=10**9):
        if run.run_id == run_id:
            return run
    return None


@dataclass
class JournalEntry:
    account: str
    region: str
    resource: str
    action: str
    summary: str
    status: str
    error: str | None


def changes(state: Path, run_id: str) -> list[JournalEntry]:
    """Each change a run touched, with its last recorded outcome, in the order first touched."""
    if not RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r}: expected the form 20261129T190000Z-1a2b3c (see `orgrunner runs`)")
    path = journal_dir(state) / f"{run_id}.jsonl"
    if not path.is_file():
        return []
    last: dict[tuple[str, str, str, str], JournalEntry] = {}
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
                change = entry["change"]
                key = (str(change["account_id"]), str(change["region"]), str(change["resource"]),
                       str(change["action"]))
            except (ValueError, KeyError, TypeError):
                continue
            last[key] = JournalEntry(*key, summary=str(change.get("summary", "")), status=str(entry.get("status")),
                                     error=entry.get("error"))
    return list(last.values())
