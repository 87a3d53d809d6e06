"""AWS's IAM data: each action's access level and dependent actions, and the actions a botocore
operation requires where they are not named `<signing name>:<operation>`.

The table (iam_table.json.gz beside this module) is generated from AWS's Service Authorization
Reference by tests/tools/generate_iam_table.py (which names the pinned source) and read once, on
first use. Every function here is a pure lookup over it: the guard, the session policies, the
declaration checks and the emulator all derive actions from this one place.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).resolve().with_name("iam_table.json.gz")
READ_LEVELS = frozenset({"List", "Read"})


@dataclass(frozen=True)
class _Table:
    source: str
    levels: tuple[str, ...]
    actions: dict[str, dict[str, Any]]  # prefix -> name -> level index, or [level index, dependents]
    operations: dict[str, dict[str, list[str]]]  # botocore service -> operation -> actions
    names: dict[str, str]  # lower-case "prefix:name" -> as AWS spells it


@functools.cache
def _table() -> _Table:
    data = json.loads(gzip.decompress(TABLE_PATH.read_bytes()))
    names = {f"{prefix}:{name}".lower(): f"{prefix}:{name}"
             for prefix, table in data["actions"].items() for name in table}
    return _Table(data["source"], tuple(data["levels"]), data["actions"], data["operations"], names)


def source() -> str:
    """Where the table came from (package, version, file)."""
    return _table().source


def canonical(action: str) -> str | None:
    """The action as AWS spells it (IAM matches actions case-insensitively), or None if AWS has none."""
    return _table().names.get(action.lower())


def _entry(action: str) -> Any:
    name = canonical(action)
    if name is None:
        return None
    prefix, _, op = name.partition(":")
    return _table().actions[prefix][op]


def access_level(action: str) -> str | None:
    """"List", "Read", "Write", "Permissions management" or "Tagging"; None for an unknown action."""
    entry = _entry(action)
    if entry is None:
        return None
    return _table().levels[entry[0] if isinstance(entry, list) else entry]


def is_read(action: str) -> bool:
    """True only for an action AWS classes as List or Read (an unknown action is not a read)."""
    return access_level(action) in READ_LEVELS


def dependent_actions(action: str) -> tuple[str, ...]:
    """The actions AWS also requires of the caller for `action` (Service Authorization Reference)."""
    entry = _entry(action)
    return tuple(entry[1]) if isinstance(entry, list) else ()


def with_dependents(actions: set[str] | frozenset[str] | tuple[str, ...]) -> set[str]:
    """`actions` and every action they depend on, transitively."""
    found, todo = set(actions), list(actions)
    while todo:
        for dependent in dependent_actions(todo.pop()):
            if dependent not in found:
                found.add(dependent)
                todo.append(dependent)
    return found


def service_actions(prefix: str) -> list[str]:
    """Every action of one service prefix ("ec2"), as AWS spells them, sorted."""
    return sorted(f"{prefix}:{name}" for name in _table().actions.get(prefix, {}))


def suggestions(action: str, count: int = 3) -> list[str]:
    """The real actions closest to a misspelled one: first within its service, then anywhere."""
    names = _table().names
    prefix = action.partition(":")[0].lower()
    same_service = [n for n in names if n.startswith(prefix + ":")]
    close = difflib.get_close_matches(action.lower(), same_service or list(names), n=count, cutoff=0.6)
    if not close and same_service:
        close = difflib.get_close_matches(action.lower(), list(names), n=count, cutoff=0.6)
    return [names[n] for n in close]


def required_actions(service_name: str, signing_name: str, operation: str) -> tuple[str, ...]:
    """The IAM actions AWS checks for one botocore operation (`service_name` as botocore names the
    service, e.g. "s3control"; `signing_name` its SigV4 name, e.g. "s3"). Without an entry in the
    table it is `<signing name>:<operation>`, which may name no action at all: such a call can be
    declared by no task, so the guard refuses it."""
    mapped = _table().operations.get(service_name, {}).get(operation)
    if mapped:
        return tuple(mapped)
    return (canonical(f"{signing_name}:{operation}") or f"{signing_name}:{operation}",)
