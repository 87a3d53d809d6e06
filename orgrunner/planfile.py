"""Saved plans: the review-then-apply flow of a change ticket.

`run --dry-run --plan-out plan.json` writes the plan; `apply plan.json` re-plans live and applies
only if the live plan equals the saved one for every target. The file holds the targets, every
change, the task and its version, both session policies and the run id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orgrunner.errors import InputError
from orgrunner.statefiles import open_file
from orgrunner.task import Change, Target

FORMAT = "orgrunner-plan/1"


@dataclass
class SavedPlan:
    run_id: str
    task: str
    task_version: str
    caller: str
    role_name: str
    regions: list[str] | None
    policies: dict[str, Any]
    targets: list[Target]  # every target planned ok, with or without changes
    changes: dict[Target, list[Change]]

    @property
    def accounts(self) -> list[str]:
        return sorted({t.account_id for t in self.targets})

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "run_id": self.run_id,
            "task": self.task,
            "task_version": self.task_version,
            "caller": self.caller,
            "role_name": self.role_name,
            "regions": self.regions,
            "policies": self.policies,
            "targets": [{"account": t.account_id, "account_name": t.account_name, "region": t.region}
                        for t in sorted(self.targets)],
            "changes": [c.to_dict() for t in sorted(self.changes) for c in self.changes[t]],
        }, indent=2, default=str)

    def write(self, path: Path, follow_symlinks: bool = False) -> None:
        """Written through orgrunner.statefiles: a symbolic link is refused unless followed on purpose."""
        try:
            with open_file(path, "w", follow_symlinks=follow_symlinks, flag="--plan-out") as handle:
                handle.write(self.to_json() + "\n")
        except OSError as exc:
            raise InputError(f"--plan-out {path}: {exc.strerror or exc}") from None


def load(path: Path) -> SavedPlan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: plan file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable plan file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not an orgrunner plan (expected format {FORMAT})")
    try:
        targets = [Target(t["account"], t["region"], t.get("account_name", "")) for t in data["targets"]]
        names = {t.account_id: t.account_name for t in targets}
        changes: dict[Target, list[Change]] = {}
        for raw in data["changes"]:
            change = Change.from_dict(raw)
            target = Target(change.account_id, change.region, names.get(change.account_id, ""))
            changes.setdefault(target, []).append(change)
        return SavedPlan(run_id=data["run_id"], task=data["task"], task_version=str(data["task_version"]),
                         caller=data.get("caller", ""), role_name=data["role_name"], regions=data.get("regions"),
                         policies=data.get("policies", {}), targets=targets, changes=changes)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: malformed plan file ({type(exc).__name__}: {exc})") from None


def drift(saved: dict[Target, list[Change]], live: dict[Target, list[Change]]) -> list[str]:
    """Lines describing every difference between the saved and the live plan (empty: none)."""
    lines: list[str] = []
    for target in sorted(set(saved) | set(live)):
        before = {(c.resource, c.action): c for c in saved.get(target, [])}
        after = {(c.resource, c.action): c for c in live.get(target, [])}
        for key in sorted(set(before) | set(after)):
            if key not in after:
                lines.append(f"{target}: - {before[key].summary} (planned, no longer needed)")
            elif key not in before:
                lines.append(f"{target}: + {after[key].summary} (not in the saved plan)")
            elif before[key] != after[key]:
                lines.append(f"{target}: ~ {after[key].summary} (differs from the saved plan)")
    return lines
