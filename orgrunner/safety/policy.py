"""Session policies built from a task's declared IAM actions, and the checks on declarations.

The plan phase assumes each member role with a policy that holds only the task's plan (read)
actions, so AWS itself refuses a write during a dry run; the apply phase adds the apply actions.
A session policy never grants more than the role has: effective rights are the intersection.
Which actions exist, which only read and which others AWS requires alongside them come from AWS's
own data (orgrunner/safety/iamdata.py), never from the names.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from orgrunner.errors import TaskLoadError
from orgrunner.safety import iamdata

if TYPE_CHECKING:
    from orgrunner.task import Phase, Task, TaskSpec

# AWS limit on the plaintext of AssumeRole's inline `Policy` (characters, whitespace excluded by
# our compact rendering). The packed binary form has its own limit; keeping the plaintext well
# under 2,048 with one statement keeps the packed size low as well.
MAX_POLICY_CHARS = 2048
ACTION = re.compile(r"\A[a-z0-9-]+:[A-Z][A-Za-z0-9]+\Z")

# Actions the engine itself performs with the task's credentials, added to every plan policy.
ENGINE_REGIONAL_ACTIONS = ("ec2:DescribeRegions",)


def is_read_action(action: str) -> bool:
    """True for an IAM action AWS classes as List or Read; an unknown action is not a read."""
    return iamdata.is_read(action)


def required_actions(service_name: str, signing_name: str, operation: str) -> tuple[str, ...]:
    """The IAM actions an API operation is authorised by (see `iamdata.required_actions`)."""
    return iamdata.required_actions(service_name, signing_name, operation)


def phase_actions(task: type[Task] | TaskSpec, phase: Phase) -> tuple[str, ...]:
    """Every action the session of `phase` may use, with the dependent actions AWS requires of
    them (Service Authorization Reference), sorted and without repeats."""
    actions = set(task.plan_actions)
    if task.regional:
        actions.update(ENGINE_REGIONAL_ACTIONS)
    if phase == "apply":
        actions.update(task.apply_actions)
    return tuple(sorted(iamdata.with_dependents(actions)))


def session_policy(task: type[Task] | TaskSpec, phase: Phase) -> dict[str, Any]:
    """The session policy document for one phase of a task."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": f"orgrunner{phase.capitalize()}",
                "Effect": "Allow",
                "Action": list(phase_actions(task, phase)),
                "Resource": "*",
            }
        ],
    }


def render(policy: dict[str, Any]) -> str:
    """The compact JSON sent as AssumeRole's `Policy`."""
    return json.dumps(policy, separators=(",", ":"))


def check_declaration(task: type[Task] | TaskSpec) -> None:
    """Refuse a task whose declaration is incomplete, unsafe or whose policy is too large."""
    name = getattr(task, "name", None)
    label = repr(name) if name else getattr(task, "__qualname__", "?")
    from orgrunner.task import TASK_NAME

    if not isinstance(name, str) or not TASK_NAME.match(name):
        raise TaskLoadError(f"task {label}: name must be lower-case words joined by '-'")
    for attr in ("description", "destructive", "plan_actions", "apply_actions"):
        if not hasattr(task, attr):
            raise TaskLoadError(f"task {label}: missing declaration {attr!r}")
    if not isinstance(task.description, str) or not task.description.strip():
        raise TaskLoadError(f"task {label}: description must be a non-empty string")
    if not task.plan_actions:
        raise TaskLoadError(f"task {label}: plan_actions must not be empty")
    for kind in ("plan_actions", "apply_actions", "undo_actions"):
        actions = getattr(task, kind, ())
        if isinstance(actions, str) or not isinstance(actions, tuple | list):
            raise TaskLoadError(f"task {label}: {kind} must be a list of IAM actions")
        for action in actions:
            if not isinstance(action, str) or not ACTION.match(action):
                raise TaskLoadError(
                    f"task {label}: {kind} holds {action!r}; expected 'service:Operation' with no wildcard"
                )
            if iamdata.canonical(action) is None:
                close = iamdata.suggestions(action)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise TaskLoadError(f"task {label}: {kind} holds {action}, which is not an IAM action AWS "
                                    f"lists{hint}")
    writes = [f"{a} ({iamdata.access_level(a)})" for a in task.plan_actions if not is_read_action(a)]
    if writes:
        raise TaskLoadError(f"task {label}: plan_actions may only read, but declares {', '.join(writes)} "
                            "(access levels from AWS's Service Authorization Reference: only List and Read read)")
    scope = getattr(task, "scope", "account")
    if scope not in ("account", "organization"):
        raise TaskLoadError(f"task {label}: scope must be 'account' or 'organization'")
    if scope == "organization" and task.regional:
        raise TaskLoadError(f"task {label}: an organization-scope task is global (regional = False)")
    if task.destructive and not task.apply_actions:
        raise TaskLoadError(f"task {label}: a destructive task must declare apply_actions")
    for phase in ("plan", "apply"):
        size = len(render(session_policy(task, phase)))
        if size > MAX_POLICY_CHARS:
            raise TaskLoadError(
                f"task {label}: its {phase} session policy is {size} characters; AWS accepts at most "
                f"{MAX_POLICY_CHARS}"
            )
