"""Saved plans: the review-then-apply flow of a change ticket.

`run --dry-run --plan-out plan.json` writes the plan; `apply plan.json` re-plans live and applies
only if the live plan equals the saved one for every target. The file holds the targets, every
change, the task and its version, both session policies and the run id.

A saved plan is a reviewed document, not a set of instructions: its *digest* binds it to the run
that made it. The digest is the SHA-256 (hex) of the plan's canonical content: the file parsed as
JSON and written again with sorted keys, no whitespace (`separators=(",", ":")`), non-ASCII
characters as themselves, encoded as UTF-8. Only presentation (indentation, key order, spacing,
string escapes) leaves it unchanged; any change to any value (a target, the role name, a region,
a change, even the session policies that `apply` ignores) makes another digest. The saving dry run
prints it and records it in the audit log (`plan-saved`); `apply` takes a file only when its
digest matches such a record in this state folder or the `--confirm-plan DIGEST` of its command
line (see `bound`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orgrunner.errors import InputError, SafetyRefusal
from orgrunner.records.statefiles import open_file
from orgrunner.task import Change, Target

FORMAT = "orgrunner-plan/1"
DIGEST = re.compile(r"\A(?:sha256:)?([0-9a-f]{64})\Z")


def canonical(data: Any) -> bytes:
    """The canonical content of a parsed plan document (see the module docstring)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def digest_of(data: Any) -> str:
    return hashlib.sha256(canonical(data)).hexdigest()


def parse_digest(text: str) -> str:
    """`--confirm-plan` value: 64 hex digits, optionally prefixed `sha256:`."""
    match = DIGEST.match(text.strip().lower())
    if not match:
        raise InputError(f"--confirm-plan {text!r}: expected the plan's SHA-256 digest (64 hex digits), "
                         "as the saving dry run printed it")
    return match.group(1)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice could be read one way by a reviewer's tool and another way here."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


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
    digest: str = ""  # of the file it was read from, or of what `write` wrote

    def binding(self) -> dict[str, Any]:
        """What the `plan-saved` audit event records beside the digest, and what `bound` names
        when a file differs from the plan its run saved."""
        return {"task": self.task, "task_version": self.task_version, "role_name": self.role_name,
                "regions": self.regions, "targets": self.accounts}

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

    def write(self, path: Path, follow_symlinks: bool = False) -> str:
        """Written through orgrunner.records.statefiles (a symbolic link is refused unless followed on
        purpose); return (and keep) the digest of exactly what was written."""
        text = self.to_json()
        try:
            with open_file(path, "w", follow_symlinks=follow_symlinks, flag="--plan-out") as handle:
                handle.write(text + "\n")
        except OSError as exc:
            raise InputError(f"--plan-out {path}: {exc.strerror or exc}") from None
        self.digest = digest_of(json.loads(text))
        return self.digest


def load(path: Path) -> SavedPlan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
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
                         policies=data.get("policies", {}), targets=targets, changes=changes,
                         digest=digest_of(data))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: malformed plan file ({type(exc).__name__}: {exc})") from None


def _shown(value: Any) -> str:
    """A value from the file, for one line on the terminal: JSON, so control characters are escaped."""
    text = json.dumps(value, ensure_ascii=False)
    return text[1:-1] if isinstance(value, str) else text


def bound(path: Path, plan: SavedPlan, confirmed: str | None, saved: Iterable[dict[str, Any]]) -> None:
    """Refuse (SafetyRefusal, one line naming what differs) a plan file whose digest is neither the
    `--confirm-plan` digest (`confirmed`) nor that of a `plan-saved` record among `saved`."""
    short = plan.digest[:12]
    if confirmed is not None:
        if confirmed != plan.digest:
            raise SafetyRefusal(f"{path} has digest {plan.digest}, not the --confirm-plan digest {confirmed}: "
                                "it is not the reviewed plan; nothing applied")
        return
    records = list(saved)
    if any(r.get("digest") == plan.digest for r in records):
        return
    same_run = [r for r in records if r.get("run_id") == plan.run_id]
    if not same_run:
        raise SafetyRefusal(f"{path} (digest {short}...) was not saved by a dry run recorded in this state folder; "
                            "to apply a reviewed plan saved elsewhere pass --confirm-plan DIGEST; nothing applied")
    record = same_run[-1]
    differs = []
    for key, value in plan.binding().items():
        was = record.get(key)
        if key == "targets":
            added, gone = sorted(set(value) - set(was or [])), sorted(set(was or []) - set(value))
            if added or gone:
                differs.append("targets" + "".join(f" +{a}" for a in added[:5]) + "".join(f" -{g}" for g in gone[:5]))
        elif value != was:
            differs.append(f"{key} {_shown(value)} (saved {_shown(was)})")
    what = "; ".join(differs) or "its changes or other content"
    raise SafetyRefusal(f"{path} differs from the plan run {plan.run_id} saved: {what}; nothing applied "
                        "(apply the plan as saved, or pass --confirm-plan with the digest of the reviewed plan)")


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
