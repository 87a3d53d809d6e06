"""Task declarations are checked at load: a task that declares a write among its plan actions, an
action wildcard, a policy AWS would refuse, or the name of another task never loads, and the
other tasks keep working.

End to end through `orgrunner tasks|policy|run --tasks-dir tests/broken_tasks`; the unit tests
call `check_declaration` on classes that are never registered (the registry is process-wide).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orgrunner.errors import TaskLoadError
from orgrunner.safety import iamdata
from orgrunner.safety.policy import MAX_POLICY_CHARS, check_declaration, render, session_policy
from orgrunner.sandbox.org import SandboxOrg
from orgrunner.task import Task
from tests.cli import Cli
from tests.emulator.client import EmulatorClient

BROKEN = str(Path(__file__).parent / "broken_tasks")
REGION = "us-east-1"


def load_errors(cli: Cli) -> dict[str, str]:
    """`orgrunner tasks --tasks-dir BROKEN`: the 'failed to load' lines keyed by file name."""
    result = cli.run("tasks", "--tasks-dir", BROKEN)
    assert result.returncode == 0, result.stderr
    errors = {}
    for line in result.stderr.splitlines():
        match = re.match(r"failed to load: \S*/(\w+\.py): (.*)$", line)
        if match:
            assert match[1] not in errors, f"two lines for {match[1]}"
            errors[match[1]] = match[2]
    return errors


# --- end to end -----------------------------------------------------------------------------


def test_broken_tasks_are_reported_one_line_each_and_the_others_still_load(cli: Cli) -> None:
    result = cli.run("tasks", "--tasks-dir", BROKEN)

    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"strip-default-sg", "writes-in-plan", "unguarded-write"} <= names
    assert not {"declares-write-in-plan", "wildcard-action", "huge-policy"} & names
    assert set(load_errors(cli)) == {"declares_write_in_plan.py", "wildcard_action.py", "huge_policy.py",
                                     "duplicate_name.py"}
    assert "Traceback" not in result.stderr


def test_write_in_plan_actions_fails_to_load_with_a_clear_message(cli: Cli, emulator: EmulatorClient) -> None:
    message = load_errors(cli)["declares_write_in_plan.py"]
    assert "'declares-write-in-plan'" in message
    assert "plan_actions may only read" in message and "ec2:RevokeSecurityGroupIngress" in message

    result = cli.run("run", "declares-write-in-plan", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION)
    assert result.returncode == 2
    assert "plan_actions may only read" in result.stderr
    assert emulator.requests() == []  # refused before any AWS call


def test_wildcard_action_fails_to_load_with_a_clear_message(cli: Cli, emulator: EmulatorClient) -> None:
    message = load_errors(cli)["wildcard_action.py"]
    assert "'wildcard-action'" in message and "'ec2:Describe*'" in message and "wildcard" in message

    result = cli.run("policy", "wildcard-action", "--tasks-dir", BROKEN)
    assert result.returncode == 2
    assert "wildcard" in result.stderr
    assert result.stdout == ""


def test_duplicate_task_name_is_reported_and_the_builtin_still_runs(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    message = load_errors(cli)["duplicate_name.py"]
    assert "'strip-default-sg'" in message and "duplicates" in message

    listed = cli.run("tasks", "--tasks-dir", BROKEN)
    [line] = [x for x in listed.stdout.splitlines() if x.startswith("strip-default-sg ")]
    assert "IMPOSTOR" not in line

    result = cli.run("run", "strip-default-sg", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     "--account", org.accounts["dev-app-1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IMPOSTOR" not in result.stdout + result.stderr
    assert "1 change(s) in 1 account(s)" in result.stdout


def test_unknown_tasks_dir_is_bad_input(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("tasks", "--tasks-dir", str(tmp_path / "missing"))
    assert result.returncode == 2


# --- unit: check_declaration ----------------------------------------------------------------


def task_class(**declaration: Any) -> type[Task]:
    """A task class (never registered) with a valid declaration, overridden by `declaration`."""
    attrs: dict[str, Any] = {
        "name": "unit-task",
        "description": "A task for unit tests.",
        "destructive": True,
        "plan_actions": ("ec2:DescribeVpcs",),
        "apply_actions": ("ec2:DeleteVpc",),
        **declaration,
    }
    return type("UnitTask", (Task,), attrs)


def test_a_valid_declaration_passes() -> None:
    check_declaration(task_class())


@pytest.mark.parametrize("action", [
    "*", "ec2:*", "ec2:Describe*", "ec2:Describe?pcs", "*:DescribeVpcs", "ec2:*Vpcs",
])
def test_action_wildcards_are_refused(action: str) -> None:
    with pytest.raises(TaskLoadError, match="no wildcard"):
        check_declaration(task_class(plan_actions=("ec2:DescribeVpcs", action)))
    with pytest.raises(TaskLoadError, match="apply_actions holds"):
        check_declaration(task_class(apply_actions=(action,)))


@pytest.mark.parametrize("action", ["DescribeVpcs", "ec2:describeVpcs", "ec2: DescribeVpcs", "ec2:Describe Vpcs",
                                    "", "ec2:", 42])
def test_malformed_actions_are_refused(action: Any) -> None:
    with pytest.raises(TaskLoadError, match="plan_actions holds"):
        check_declaration(task_class(plan_actions=(action,)))


@pytest.mark.parametrize("write", ["ec2:RevokeSecurityGroupIngress", "iam:UpdateAccountPasswordPolicy",
                                   "s3:PutAccountPublicAccessBlock", "ec2:DeleteVpc", "ec2:ModifyVpcAttribute"])
def test_writes_in_plan_actions_are_refused(write: str) -> None:
    with pytest.raises(TaskLoadError, match=f"plan_actions may only read, but declares {write}"):
        check_declaration(task_class(plan_actions=("ec2:DescribeVpcs", write)))


@pytest.mark.parametrize("write", ["redshift:GetClusterCredentials", "states:GetActivityTask",
                                   "sts:GetWebIdentityToken"])
def test_plan_actions_named_like_reads_are_refused_by_their_access_level(write: str) -> None:
    """AWS classes these Get* actions as Write (or Permissions management): a name is no proof of a read."""
    level = iamdata.access_level(write)
    assert level not in (None, "List", "Read"), (write, level)
    with pytest.raises(TaskLoadError, match=f"plan_actions may only read, but declares {write} \\({level}\\)"):
        check_declaration(task_class(plan_actions=("ec2:DescribeVpcs", write)))


@pytest.mark.parametrize(("kind", "typo", "suggested"), [
    ("plan_actions", "ec2:DescribeVpc", "ec2:DescribeVpcs"),
    ("plan_actions", "securityhub:GetEnabledStandard", "securityhub:GetEnabledStandards"),
    ("apply_actions", "s3:PutPublicAccessBlock", "s3:PutBucketPublicAccessBlock"),
    ("apply_actions", "ec2:RevokeSecurityGroupIngres", "ec2:RevokeSecurityGroupIngress"),
])
def test_an_action_aws_does_not_list_is_refused_with_the_closest_names(kind: str, typo: str, suggested: str) -> None:
    with pytest.raises(TaskLoadError, match="not an IAM action AWS lists; did you mean") as refused:
        check_declaration(task_class(**{kind: (typo,)}))
    assert suggested in str(refused.value)


def test_undo_actions_are_checked_against_aws_too() -> None:
    with pytest.raises(TaskLoadError, match="undo_actions holds ec2:AuthorizeSecurityGroupIngres, which is not"):
        check_declaration(task_class(undo_actions=("ec2:AuthorizeSecurityGroupIngres",)))


def test_each_phase_policy_holds_the_dependent_actions_aws_requires() -> None:
    cls = task_class(plan_actions=("securityhub:BatchGetStandardsControlAssociations",),
                     apply_actions=("securityhub:BatchUpdateStandardsControlAssociations",))
    plan = session_policy(cls, "plan")["Statement"][0]["Action"]
    apply = session_policy(cls, "apply")["Statement"][0]["Action"]
    assert "securityhub:DescribeStandardsControls" in plan and "securityhub:UpdateStandardsControl" not in plan
    assert {"securityhub:DescribeStandardsControls", "securityhub:UpdateStandardsControl"} <= set(apply)


def test_dependent_actions_count_toward_the_policy_size_limit() -> None:
    """Declared actions whose policy would fit, plus the dependents AWS requires, exceed 2,048: refused."""
    declared_apply = ("securityhub:BatchUpdateStandardsControlAssociations",)
    reads = _reads(200)
    for n in range(1, 200):
        cls = task_class(plan_actions=reads[:n], apply_actions=declared_apply)
        declared_only = {"Version": "2012-10-17", "Statement": [{"Sid": "orgrunnerApply", "Effect": "Allow",
                         "Action": sorted({*reads[:n], *declared_apply}), "Resource": "*"}]}
        if len(render(session_policy(cls, "apply"))) > MAX_POLICY_CHARS >= len(render(declared_only)):
            break
    else:
        pytest.fail("no declaration fits without its dependents and overflows with them")
    with pytest.raises(TaskLoadError, match="its apply session policy is"):
        check_declaration(cls)


@pytest.mark.parametrize(("declaration", "message"), [
    ({"plan_actions": ()}, "plan_actions must not be empty"),
    ({"plan_actions": "ec2:DescribeVpcs"}, "must be a list"),
    ({"destructive": True, "apply_actions": ()}, "destructive task must declare apply_actions"),
    ({"description": "  "}, "description"),
    ({"name": "Bad_Name"}, "name must be"),
])
def test_incomplete_declarations_are_refused(declaration: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskLoadError, match=message):
        check_declaration(task_class(**declaration))


def test_a_missing_declaration_is_refused() -> None:
    cls = type("NoActions", (Task,), {"name": "no-actions", "description": "x", "destructive": False})
    with pytest.raises(TaskLoadError, match="missing declaration 'plan_actions'"):
        check_declaration(cls)


def _reads(n: int) -> tuple[str, ...]:
    """`n` real actions AWS classes as reads."""
    reads = [a for a in iamdata.service_actions("ec2") if iamdata.is_read(a)]
    assert len(reads) >= n
    return tuple(reads[:n])


def _writes() -> list[str]:
    return [a for a in iamdata.service_actions("ec2") if not iamdata.is_read(a)]


def test_policy_size_limit_applies_to_each_phase_at_the_boundary() -> None:
    def size(cls: type[Task], phase: str) -> int:
        return len(render(session_policy(cls, phase)))  # type: ignore[arg-type]

    # Grow the apply actions one by one until the apply policy passes the limit.
    reads = ("ec2:DescribeVpcs",)
    fits, over = None, None
    writes: list[str] = []
    for write in _writes()[:200]:
        writes.append(write)
        cls = task_class(plan_actions=reads, apply_actions=tuple(writes))
        if size(cls, "apply") > MAX_POLICY_CHARS:
            over = cls
            break
        fits = cls
    assert fits is not None and over is not None
    assert size(fits, "apply") <= MAX_POLICY_CHARS < size(over, "apply")
    assert size(over, "plan") < MAX_POLICY_CHARS  # only the apply policy is too large
    check_declaration(fits)
    with pytest.raises(TaskLoadError, match=r"its apply session policy is \d+ characters; AWS accepts at most 2048"):
        check_declaration(over)


def test_too_many_plan_actions_are_refused() -> None:
    with pytest.raises(TaskLoadError, match="its plan session policy is"):
        check_declaration(task_class(plan_actions=_reads(200)))
