"""Idempotence: applying a task twice changes nothing the second time, and an apply racing a manual
change (a rule someone else already removed) counts it as done, not failed.

Every built-in task listed in EMULATED is covered; `securityhub-controls`' "already as wanted" path
is covered end to end in tests/test_task_securityhub_controls.py (its armed run replans clean).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pexpect
import pytest

from orgrunner.sandbox.org import SandboxOrg
from orgrunner.task import GLOBAL_REGION, configure, load_tasks
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, member_client
from tests.tasks_helpers import emulator_contexts
from tests.test_run_dry import new_requests, snapshot, writes

REGION = "us-east-1"
EMULATED = ("strip-default-sg", "ebs-default-encryption", "iam-password-policy", "s3-account-public-access-block")
# Covered elsewhere: the seeded organization enables Security Hub in some members only, so its
# "already as wanted" path runs end to end in tests/test_task_securityhub_controls.py instead.
COVERED_ELSEWHERE = {"securityhub-controls": "tests/test_task_securityhub_controls.py (its armed run replans clean)",
                     "org-accounts": "tests/test_org_accounts.py (its armed run replans as nothing to do)"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_every_built_in_task_is_covered() -> None:
    assert set(load_tasks().tasks) == set(EMULATED) | set(COVERED_ELSEWHERE)


def armed(cli: Cli, task: str, accounts: list[str], report: Path) -> Any:
    selectors = [x for a in accounts for x in ("--account", a)]
    return cli.run("run", task, "--arm", *selectors, "--region", REGION, "--confirm-accounts", ",".join(accounts),
                   "--report", str(report))


def journal(cli: Cli) -> list[dict[str, Any]]:
    """The journal's outcome lines (each change also has an `applying` line written before the call)."""
    lines = [json.loads(line) for path in sorted((cli.home / "state" / "orgrunner" / "journal").glob("*.jsonl"))
             for line in path.read_text().splitlines()]
    return [e for e in lines if e["status"] != "applying"]


@pytest.mark.parametrize("task", EMULATED)
def test_an_armed_run_repeated_changes_nothing_the_second_time(cli: Cli, org: SandboxOrg, emulator: EmulatorClient,
                                                               task: str) -> None:
    accounts = sorted([org.accounts["dev-app-1"], org.accounts["sandbox-1"]])
    first = armed(cli, task, accounts, cli.home / "first.jsonl")
    assert first.returncode == 0, first.stderr[-2000:]
    assert re.search(r"Apply: \d+ target\(s\) in 2 account\(s\): \d+ applied; 0 target\(s\) failed", first.stdout), \
        first.stdout[-2000:]

    mark = len(emulator.requests())
    second = armed(cli, task, accounts, cli.home / "second.jsonl")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "0 change(s) in 0 account(s); 0 failed" in second.stdout
    assert ": no planned changes: nothing to apply." in second.stdout
    assert writes(new_requests(emulator, mark)) == []
    records = [json.loads(line) for line in (cli.home / "second.jsonl").read_text().splitlines()]
    assert records and all(r["phase"] == "plan" and r["status"] == "ok" and r["changes"] == [] for r in records)


@pytest.mark.parametrize("task", EMULATED)
def test_the_same_change_applied_twice_is_already_done_the_second_time(
        org: SandboxOrg, emulator: EmulatorClient, tmp_path: Path, task: str) -> None:
    cls = load_tasks().get(task)
    instance = configure(cls, tmp_path)  # no config files here: each task's defaults
    account = org.accounts["prod-app-1"]
    plan_ctx, apply_ctx = emulator_contexts(emulator, instance, account, REGION if cls.regional else GLOBAL_REGION)
    changes = instance.plan(plan_ctx)
    assert changes, "the fresh organization should need this task"

    assert [instance.apply(apply_ctx, c) for c in changes] == ["applied"] * len(changes)
    mark = len(emulator.requests())
    assert [instance.apply(apply_ctx, c) for c in changes] == ["already done"] * len(changes)
    assert writes(new_requests(emulator, mark)) == []
    assert instance.plan(plan_ctx) == []


# --- racing a manual change ---------------------------------------------------------------------------

def default_group(url: str, account: str) -> tuple[Any, str, list[dict[str, Any]]]:
    ec2 = member_client(url, account, "ec2", REGION)
    group = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])
    return ec2, group["GroupId"], rules["SecurityGroupRules"]


def revoke_by_hand(url: str, account: str, how_many: int | None = None) -> list[str]:
    """Someone else removes `how_many` ingress rules (None: every rule) of the account's default group."""
    ec2, group_id, rules = default_group(url, account)
    if how_many is not None:
        ingress = [r["SecurityGroupRuleId"] for r in rules if not r["IsEgress"]][:how_many]
        ec2.revoke_security_group_ingress(GroupId=group_id, SecurityGroupRuleIds=ingress)
        return ingress
    for egress, revoke in ((False, ec2.revoke_security_group_ingress), (True, ec2.revoke_security_group_egress)):
        ids = [r["SecurityGroupRuleId"] for r in rules if r["IsEgress"] == egress]
        revoke(GroupId=group_id, SecurityGroupRuleIds=ids)
    return [r["SecurityGroupRuleId"] for r in rules]


def at_the_prompt(cli: Cli, accounts: list[str]) -> pexpect.spawn:
    """An armed run at a terminal, planned and waiting for the typed confirmation."""
    selectors = [x for a in accounts for x in ("--account", a)]
    child = cli.spawn("run", "strip-default-sg", "--arm", *selectors, "--region", REGION, timeout=90)
    child.expect("type the ids of the accounts")
    return child


def confirm(child: pexpect.spawn, accounts: list[str]) -> tuple[int | None, str]:
    child.sendline(" ".join(accounts))
    child.expect(pexpect.EOF)
    text = ANSI.sub("", child.before)
    child.close()
    return child.exitstatus, text


def test_rules_removed_by_someone_else_after_the_plan_count_as_done(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    partly, wholly = org.accounts["dev-app-1"], org.accounts["sandbox-1"]
    child = at_the_prompt(cli, [partly, wholly])
    revoke_by_hand(emulator.url, partly, how_many=1)
    revoke_by_hand(emulator.url, wholly)
    code, text = confirm(child, [partly, wholly])

    assert code == 0, text[-2000:]
    assert "Apply: 2 target(s) in 2 account(s): 1 already done, 1 applied; 0 target(s) failed." in text
    outcomes = {e["change"]["account_id"]: e["status"] for e in journal(cli)}
    assert outcomes == {partly: "applied", wholly: "already done"}
    assert snapshot(emulator.url, [partly, wholly], [REGION]) == {(partly, REGION): {}, (wholly, REGION): {}}


def test_undo_restores_only_the_rules_the_run_removed(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]
    _, _, seeded = default_group(emulator.url, account)
    child = at_the_prompt(cli, [account])
    (gone,) = revoke_by_hand(emulator.url, account, how_many=1)
    code, text = confirm(child, [account])
    assert code == 0, text[-2000:]
    (entry,) = journal(cli)

    undo = cli.run("undo", entry["run_id"], "--arm", "--confirm-accounts", account)
    assert undo.returncode == 0, undo.stderr[-2000:]
    _, _, restored = default_group(emulator.url, account)
    assert len(restored) == len(seeded) - 1  # all but the rule someone else had removed
    restored_peers = sorted(json.dumps({k: r.get(k) for k in ("IsEgress", "IpProtocol", "FromPort", "ToPort",
                                                                "CidrIpv4", "CidrIpv6")}) for r in restored)
    gone_rule = next(r for r in seeded if r["SecurityGroupRuleId"] == gone)
    assert json.dumps({k: gone_rule.get(k) for k in ("IsEgress", "IpProtocol", "FromPort", "ToPort", "CidrIpv4",
                                                      "CidrIpv6")}) not in restored_peers


def rule_hits(emulator: EmulatorClient, rule_id: int) -> int:
    with urllib.request.urlopen(f"{emulator.url}/_emulator/rules", timeout=10) as answer:
        return int(next(r["hits"] for r in json.load(answer) if r["id"] == rule_id))


def test_a_rule_removed_by_someone_else_during_the_apply_counts_as_done(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]
    held = emulator.add_rule(service="ec2", operation="RevokeSecurityGroupIngress", account=account,
                             latency_ms=1500, times=1)
    process = cli.spawn("run", "strip-default-sg", "--arm", "--account", account, "--region", REGION,
                        "--confirm-accounts", account, timeout=90)
    deadline = time.monotonic() + 60
    while rule_hits(emulator, held) == 0:  # orgrunner's revoke has read the rules and is on its way
        assert time.monotonic() < deadline, "orgrunner never revoked"
        time.sleep(0.05)
    revoke_by_hand(emulator.url, account, how_many=1)
    process.expect(pexpect.EOF)
    process.close()
    assert snapshot(emulator.url, [account], [REGION]) == {(account, REGION): {}}
    assert process.exitstatus == 0, ANSI.sub("", process.before or "")[-2000:]
    assert {e["status"] for e in journal(cli)} <= {"applied", "already done"}
