"""Safety layer 2: the server-side read-only dry run.

The plan phase assumes each member role with a session policy holding only the task's plan
(read) actions; only the apply phase, after the confirmation, assumes again with the apply
policy. `orgrunner policy TASK --phase plan|apply` prints exactly what AssumeRole carries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pexpect

from orgrunner.safety.policy import MAX_POLICY_CHARS, is_read_action, render, session_policy
from orgrunner.sandbox.org import SandboxOrg
from orgrunner.task import load_tasks
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, member_client

BROKEN = str(Path(__file__).parent / "broken_tasks")
REGION = "us-east-1"
REVOKES = {"ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress"}


def cli_policy(cli: Cli, task: str, phase: str) -> dict[str, Any]:
    result = cli.run("policy", task, "--phase", phase)
    assert result.returncode == 0, result.stderr
    policy: dict[str, Any] = json.loads(result.stdout)
    return policy


def actions(policy: dict[str, Any]) -> list[str]:
    listed: list[str] = []
    for statement in policy["Statement"]:
        action = statement["Action"]
        listed += [action] if isinstance(action, str) else action
    return listed


def orgrunner_assumes(emulator: EmulatorClient) -> list[dict[str, Any]]:
    """AssumeRole calls orgrunner made into member accounts (not the tests' own), in order."""
    return [r for r in emulator.requests("sts", "AssumeRole")
            if (r["params"]["RoleSessionName"] or "").startswith("or.")]


def policies_sent(emulator: EmulatorClient) -> list[dict[str, Any] | None]:
    return [json.loads(r["params"]["Policy"]) if r["params"]["Policy"] else None for r in orgrunner_assumes(emulator)]


def default_rules(emulator: EmulatorClient, account: str, region: str = REGION) -> list[str]:
    ec2 = member_client(emulator.url, account, "ec2", region)
    rules = ec2.describe_security_group_rules()["SecurityGroupRules"]
    groups = {g["GroupId"] for g in ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]}
    return sorted(r["SecurityGroupRuleId"] for r in rules if r["GroupId"] in groups)


# --- what `orgrunner policy` prints ----------------------------------------------------------


def test_plan_policy_holds_reads_only_and_no_wildcard(cli: Cli) -> None:
    policy = cli_policy(cli, "strip-default-sg", "plan")

    assert [st["Effect"] for st in policy["Statement"]] == ["Allow"]
    listed = actions(policy)
    assert listed and all(is_read_action(a) for a in listed), listed
    assert not any("*" in a or "?" in a for a in listed), listed
    assert {"ec2:DescribeVpcs", "ec2:DescribeSecurityGroups", "ec2:DescribeSecurityGroupRules"} <= set(listed)
    assert not REVOKES & set(listed)


def test_apply_policy_adds_exactly_the_two_revokes(cli: Cli) -> None:
    plan = set(actions(cli_policy(cli, "strip-default-sg", "plan")))
    apply = set(actions(cli_policy(cli, "strip-default-sg", "apply")))

    assert apply - plan == REVOKES
    assert plan <= apply
    assert not any("*" in a for a in apply)


def test_policy_command_rejects_an_unknown_phase(cli: Cli) -> None:
    result = cli.run("policy", "strip-default-sg", "--phase", "everything")
    assert result.returncode == 2
    assert "--phase" in result.stderr


def test_every_builtin_task_has_read_only_plan_policy_within_limits() -> None:
    """Every task that ships: plan policy reads only, no action wildcard, both phases under the limit."""
    loaded = load_tasks()
    assert "strip-default-sg" in loaded.tasks
    for name, task in loaded.tasks.items():
        plan, apply = session_policy(task, "plan"), session_policy(task, "apply")
        assert all(is_read_action(a) for a in actions(plan)), name
        assert not any("*" in a for a in actions(plan) + actions(apply)), name
        assert set(actions(plan)) <= set(actions(apply)), name
        assert len(render(plan)) <= MAX_POLICY_CHARS and len(render(apply)) <= MAX_POLICY_CHARS, name


# --- what AssumeRole actually carries --------------------------------------------------------


def test_dry_run_assumes_every_role_with_exactly_the_plan_policy(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    plan = cli_policy(cli, "strip-default-sg", "plan")
    accounts = [org.accounts["prod-app-1"], org.accounts["dev-app-1"], org.accounts["sandbox-1"]]

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION,
                     *[arg for a in accounts for arg in ("--account", a)])

    assert result.returncode == 0, result.stderr
    assumed = orgrunner_assumes(emulator)
    assert sorted(r["target_account"] for r in assumed) == sorted(accounts)  # one per account
    assert policies_sent(emulator) == [plan] * len(accounts)
    assert all(r["params"]["Policy"] == render(plan) for r in assumed)  # compact, as sized


def test_armed_run_assumes_again_with_the_apply_policy_after_confirmation(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    plan, apply = cli_policy(cli, "strip-default-sg", "plan"), cli_policy(cli, "strip-default-sg", "apply")
    accounts = sorted([org.accounts["dev-app-1"], org.accounts["sandbox-1"]])

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(accounts),
                     "--region", REGION, *[arg for a in accounts for arg in ("--account", a)])

    assert result.returncode == 0, result.stdout + result.stderr
    assumed = orgrunner_assumes(emulator)
    sent = policies_sent(emulator)
    assert len(assumed) == 2 * len(accounts)
    assert sent[:len(accounts)] == [plan] * len(accounts)  # every plan-phase assume comes first
    assert sent[len(accounts):] == [apply] * len(accounts)
    assert sorted(r["target_account"] for r in assumed[len(accounts):]) == accounts
    assert all(default_rules(emulator, a) == [] for a in accounts)


def test_refused_confirmation_never_assumes_with_the_apply_policy(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    apply = cli_policy(cli, "strip-default-sg", "apply")
    accounts = sorted([org.accounts["dev-app-1"], org.accounts["sandbox-1"]])
    before = {a: default_rules(emulator, a) for a in accounts}

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", accounts[0],  # one missing
                     "--region", REGION, *[arg for a in accounts for arg in ("--account", a)])

    assert result.returncode == 3, result.stdout + result.stderr
    assert "nothing applied" in result.stderr
    assert len(orgrunner_assumes(emulator)) == len(accounts)  # the plan's only
    assert apply not in policies_sent(emulator)
    assert {a: default_rules(emulator, a) for a in accounts} == before


def test_apply_policy_is_assumed_only_once_the_operator_has_typed_the_confirmation(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    plan, apply = cli_policy(cli, "strip-default-sg", "plan"), cli_policy(cli, "strip-default-sg", "apply")
    account = org.accounts["sandbox-2"]

    child = cli.spawn("run", "strip-default-sg", "--arm", "--region", REGION, "--account", account)
    child.expect("type the ids of the accounts")
    assert policies_sent(emulator) == [plan]  # waiting at the prompt: no apply session yet
    child.sendline(account)
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 0, child.before
    assert policies_sent(emulator) == [plan, apply]
    assert default_rules(emulator, account) == []


def test_wrong_typed_confirmation_never_assumes_with_the_apply_policy(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    plan = cli_policy(cli, "strip-default-sg", "plan")
    account = org.accounts["sandbox-2"]
    before = default_rules(emulator, account)

    child = cli.spawn("run", "strip-default-sg", "--arm", "--region", REGION, "--account", account)
    for wrong in ("yes", "y", "all"):  # every one of the three attempts answered wrongly
        child.expect("type the ids of the accounts")
        child.sendline(wrong)
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 3
    assert policies_sent(emulator) == [plan]
    assert default_rules(emulator, account) == before


# --- tasks whose policy cannot be sent -------------------------------------------------------


def test_task_whose_policy_is_too_large_fails_to_load(cli: Cli, emulator: EmulatorClient) -> None:
    listed = cli.run("tasks", "--tasks-dir", BROKEN)

    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^strip-default-sg\s", listed.stdout, re.M)  # the others still load
    assert "huge-policy" not in listed.stdout
    [line] = [x for x in listed.stderr.splitlines() if "huge-policy" in x]
    assert "policy" in line and str(MAX_POLICY_CHARS) in line, line

    for args in (("run", "huge-policy", "--dry-run", "--region", REGION), ("policy", "huge-policy")):
        result = cli.run(*args, "--tasks-dir", BROKEN)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "huge-policy" in result.stderr and "policy" in result.stderr
    assert emulator.requests("sts", "AssumeRole") == []


def test_policy_is_compact_json_sized_as_sent() -> None:
    task = load_tasks().get("strip-default-sg")
    text = render(session_policy(task, "apply"))
    assert not re.search(r"\s", text)
    assert json.loads(text) == session_policy(task, "apply")
