"""Dry run: plans every selected account x region, prints the plan, reads only, changes nothing.

Also home of the small helpers the other run tests share (rule snapshots, write-call filters).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, assume_role, aws_client

SEEDED = ("us-east-1", "eu-west-1")
READ_PREFIXES = ("Describe", "Get", "List")
RESULT_LINE = re.compile(r"^(\d{12}) +(\S+) +(\S+) +(.*)$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")

Rules = dict[str, dict[str, Any]]  # rule id -> rule
Snapshot = dict[tuple[str, str], Rules]  # (account, region) -> rules of its default security group(s)


# --- shared helpers ----------------------------------------------------------------------------

def default_sg_rules(url: str, account: str, regions: tuple[str, ...] | list[str] = SEEDED) -> dict[str, Rules]:
    """The rules of the default security groups of `account` in each region, read as the tests' own
    session (not orgrunner's)."""
    creds = assume_role(url, account)
    found: dict[str, Rules] = {}
    for region in regions:
        ec2 = aws_client(url, "ec2", region, **creds)
        groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])
        ids = [g["GroupId"] for g in groups["SecurityGroups"]]
        assert ids, f"no default security group in {account} {region}"
        rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": ids}])
        found[region] = {r["SecurityGroupRuleId"]: r for r in rules["SecurityGroupRules"]}
    return found


def snapshot(url: str, accounts: list[str] | tuple[str, ...] | Any,
             regions: tuple[str, ...] | list[str] = SEEDED) -> Snapshot:
    return {(account, region): rules
            for account in accounts
            for region, rules in default_sg_rules(url, account, regions).items()}


def new_requests(emulator: EmulatorClient, mark: int) -> list[dict[str, Any]]:
    return emulator.requests()[mark:]


def writes(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every call that is not a read (AssumeRole and GetCallerIdentity count as reads here)."""
    return [r for r in requests
            if not r["operation"].startswith(READ_PREFIXES) and r["operation"] not in ("AssumeRole",)]


def assume_calls(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["operation"] == "AssumeRole"]


def planned(stdout: str) -> dict[tuple[str, str], int]:
    """(account, region) -> number of changes listed in the plan's details (run with --details all):
    an account line, its regions indented under it, each region's changes under that."""
    found: dict[tuple[str, str], int] = {}
    account = region = ""
    for line in stdout.splitlines():
        if m := re.match(r"^(\d{12}) \S+$", line):
            account = m.group(1)
        elif m := re.match(r"^  ([a-z]{2}(?:-[a-z]+)+-\d|global)$", line):
            region = m.group(1)
        elif re.match(r"^    [!~] ", line):
            found[(account, region)] = found.get((account, region), 0) + 1
    return found


def result_lines(stdout: str) -> list[tuple[str, str, str]]:
    """(account, region, rest) of each per-target line a run printed (failed, skipped, applied...)."""
    found = []
    for line in stdout.splitlines():
        if m := RESULT_LINE.match(line):
            found.append((m.group(1), m.group(3), m.group(4)))
    return found


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


# --- the dry run --------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_leaves_every_rule_in_place(cli: Cli, org: SandboxOrg,
                                                                 emulator: EmulatorClient) -> None:
    accounts = list(org.accounts.values())
    before = snapshot(emulator.url, accounts)
    assert all(len(rules) >= 5 for rules in before.values())  # seeded: 4 permissive ingress + egress
    mark = len(emulator.requests())

    result = ok(cli.run("run", "strip-default-sg", "--dry-run", "--region", "us-east-1", "--region", "eu-west-1",
                        "--details", "all"))

    # one change per account x region, grouped by account and region, and every rule id under it
    changes = planned(result.stdout)
    assert sorted(changes) == sorted(before)
    assert set(changes.values()) == {1}, changes
    for rules in before.values():
        for rule_id in rules:
            assert f"- {rule_id}: " in result.stdout
    assert "remove 4 ingress and 1 egress rule(s)" in result.stdout
    assert ("Plan: 8 account(s), 2 region(s), 16 target(s): 16 change(s) in 8 account(s); 0 failed, 0 skipped."
            in result.stdout)
    assert "Dry run: nothing was changed" in result.stdout

    requests = new_requests(emulator, mark)
    assert writes(requests) == []
    assert not [r for r in requests if r["operation"].startswith(("Revoke", "Authorize"))]
    assert all(r["status"] == 200 for r in requests), [r for r in requests if r["status"] != 200]
    assert snapshot(emulator.url, accounts) == before


def test_dry_run_is_the_default(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    accounts = [org.accounts["dev-app-1"], org.accounts["sandbox-2"]]
    before = snapshot(emulator.url, accounts)
    mark = len(emulator.requests())
    result = ok(cli.run("run", "strip-default-sg", "--region", "eu-west-1", "--region", "us-east-1",
                        *[x for a in accounts for x in ("--account", a)]))
    assert "(dry-run)" in result.stderr
    assert "Dry run: nothing was changed" in result.stdout
    assert "Plan: 2 account(s), 2 region(s), 4 target(s): 4 change(s) in 2 account(s)" in result.stdout
    assert writes(new_requests(emulator, mark)) == []
    assert snapshot(emulator.url, accounts) == before


def test_dry_run_assumes_each_role_once_with_a_read_only_session_policy(cli: Cli, org: SandboxOrg,
                                                                       emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    ok(cli.run("run", "strip-default-sg", "--region", "us-east-1", "--region", "eu-west-1"))

    calls = assume_calls(new_requests(emulator, mark))
    # once per account, not per region
    assert sorted(c["target_account"] for c in calls) == sorted(org.accounts.values())
    for call in calls:
        params = call["params"]
        account = call["target_account"]
        assert params["RoleArn"] == f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole"
        assert params["RoleSessionName"] and SESSION_NAME.match(params["RoleSessionName"])
        assert "strip-default-sg" in params["RoleSessionName"]
        assert params["SourceIdentity"] and SESSION_NAME.match(params["SourceIdentity"])
        assert params["DurationSeconds"] and 900 <= params["DurationSeconds"] <= 43200
        assert params["Policy"], "the plan phase must carry a session policy"
        policy = json.loads(params["Policy"])
        actions = [a for st in policy["Statement"] for a in
                   ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])]
        assert all(st["Effect"] == "Allow" for st in policy["Statement"])
        assert actions and all(a.split(":", 1)[1].startswith(READ_PREFIXES) for a in actions), actions
        assert not any("*" in a for a in actions), actions
        assert "ec2:DescribeSecurityGroupRules" in actions
        assert not [a for a in actions if "Revoke" in a or "Authorize" in a]
    # every orgrunner session in this run carries the same name (operator + task + run)
    assert len({c["params"]["RoleSessionName"] for c in calls}) == 1
    assert len({c["params"]["SourceIdentity"] for c in calls}) == 1
    # and the member-account calls were all made with those sessions
    member_calls = [r for r in new_requests(emulator, mark) if r["service"] == "ec2"]
    assert member_calls and {r["session"] for r in member_calls} == {calls[0]["params"]["RoleSessionName"]}


def test_dry_run_needs_nothing_beyond_its_read_only_session_policy(cli: Cli, org: SandboxOrg,
                                                                    emulator: EmulatorClient) -> None:
    """With session policies enforced as AWS does, the plan phase is not refused anywhere."""
    emulator.enforce_session_policies(True)
    mark = len(emulator.requests())
    result = ok(cli.run("run", "strip-default-sg", "--region", "us-east-1", "--ou", org.ous["NonProd"]))
    assert "Plan: 4 account(s), 1 region(s), 4 target(s): 4 change(s) in 4 account(s); 0 failed" in result.stdout
    assert [r for r in new_requests(emulator, mark) if r["status"] == 403] == []


def test_dry_run_without_region_covers_every_enabled_region_with_one_assume_role(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["security-audit"]
    mark = len(emulator.requests())
    result = ok(cli.run("run", "strip-default-sg", "--account", account, "--details", "all"))
    changes = planned(result.stdout)
    regions = {r for _, r in changes}
    assert set(SEEDED) <= regions and len(regions) > 10
    assert {a for a, _ in changes} == {account}
    # the seeded regions hold the permissive rules; every region has at least moto's default egress rule
    assert all(changes[(account, r)] == 1 for r in SEEDED)
    requests = new_requests(emulator, mark)
    assert [c["target_account"] for c in assume_calls(requests)] == [account]
    assert writes(requests) == []
    assert f"Plan: 1 account(s), {len(regions)} region(s), {len(regions)} target(s)" in result.stdout


def test_role_that_cannot_be_assumed_fails_that_account_alone(cli: Cli, org: SandboxOrg,
                                                              emulator: EmulatorClient) -> None:
    denied = org.accounts["prod-app-2"]
    emulator.add_rule(operation="AssumeRole", target_account=denied, code="AccessDenied",
                      message="not authorized to perform sts:AssumeRole on OrganizationAccountAccessRole", status=403)
    mark = len(emulator.requests())
    result = ok(cli.run("run", "strip-default-sg", "--region", "us-east-1", "--region", "eu-west-1",
                        "--details", "all"), 1)

    lines = result_lines(result.stdout)
    failed = [(a, r, rest) for a, r, rest in lines if rest.startswith("FAILED")]
    assert sorted((a, r) for a, r, _ in failed) == sorted((denied, r) for r in SEEDED)
    for _, _, rest in failed:
        assert f"arn:aws:iam::{denied}:role/OrganizationAccountAccessRole" in rest
        assert "AccessDenied" in rest
        assert "Traceback" not in rest
    changes = planned(result.stdout)
    others = [a for a in org.accounts.values() if a != denied]
    assert set(changes) == {(a, r) for a in others for r in SEEDED} and set(changes.values()) == {1}
    assert "Plan: 8 account(s), 2 region(s), 16 target(s): 14 change(s) in 7 account(s); 2 failed" in result.stdout
    # the denied account was tried once, not once per region, and got no further
    requests = new_requests(emulator, mark)
    assert [c["target_account"] for c in assume_calls(requests)].count(denied) == 1
    assert not [r for r in requests if r["service"] == "ec2" and r["account"] == denied]
    assert writes(requests) == []
