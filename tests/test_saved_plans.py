"""Saved plans: `run --dry-run --plan-out plan.json`, then `apply plan.json`, which plans again live
and applies only when the live plan equals the saved one for every target (exit 3 otherwise)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, member_client
from tests.test_attacks import digest

REGIONS = ("us-east-1", "eu-west-1")
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
WRITE_PREFIXES = ("Revoke", "Authorize")
EXTRA_RULE = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}

Groups = dict[str, list[dict[str, Any]]]  # default group id -> its rules (as DescribeSecurityGroupRules)


def default_groups(url: str, account: str, region: str) -> Groups:
    """The default security groups of `account` in `region` and their rules, read by the test itself."""
    ec2 = member_client(url, account, "ec2", region)
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]
    found: Groups = {}
    for group in groups:
        rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])
        found[group["GroupId"]] = sorted(rules["SecurityGroupRules"], key=lambda r: r["SecurityGroupRuleId"])
    assert found, f"no default security group in {account} {region}"
    return found


def state(url: str, accounts: list[str], regions: tuple[str, ...] = REGIONS) -> dict[tuple[str, str], Groups]:
    return {(a, r): default_groups(url, a, r) for a in accounts for r in regions}


def only_group(url: str, account: str, region: str) -> str:
    (group_id,) = default_groups(url, account, region)
    return group_id


def selectors(accounts: list[str], regions: tuple[str, ...]) -> list[str]:
    return [*[x for a in accounts for x in ("--account", a)], *[x for r in regions for x in ("--region", r)]]


def writes_since(emulator: EmulatorClient, mark: int) -> list[dict[str, Any]]:
    return [r for r in emulator.requests()[mark:] if r["operation"].startswith(WRITE_PREFIXES)]


def check(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def save_plan(cli: Cli, path: Path, accounts: list[str], regions: tuple[str, ...] = REGIONS) -> dict[str, Any]:
    check(cli.run("run", "strip-default-sg", "--dry-run", "--plan-out", str(path), *selectors(accounts, regions)), 0)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture
def pair(org: SandboxOrg) -> list[str]:
    return [org.accounts["dev-app-1"], org.accounts["sandbox-1"]]


# --- the plan file -----------------------------------------------------------------------------

def test_plan_file_holds_targets_changes_version_policies_and_run_id(cli: Cli, emulator: EmulatorClient,
                                                                     pair: list[str], tmp_path: Path) -> None:
    before = state(emulator.url, pair)
    mark = len(emulator.requests())
    plan = save_plan(cli, tmp_path / "plan.json", pair)

    assert {"format", "run_id", "task", "task_version", "policies", "targets", "changes"} <= set(plan)
    assert plan["format"] == "orgrunner-plan/1"
    assert plan["task"] == "strip-default-sg"
    assert plan["task_version"] == "1"
    assert RUN_ID.match(plan["run_id"])
    starts = [e for e in cli.audit() if e["event"] == "run-start"]
    assert [e["run_id"] for e in starts] == [plan["run_id"]]

    # both session policies, exactly as `orgrunner policy` shows them
    assert set(plan["policies"]) == {"plan", "apply"}
    for phase in ("plan", "apply"):
        shown = check(cli.run("policy", "strip-default-sg", "--phase", phase), 0)
        assert plan["policies"][phase] == json.loads(shown.stdout)
    plan_actions = {a for st in plan["policies"]["plan"]["Statement"] for a in st["Action"]}
    apply_actions = {a for st in plan["policies"]["apply"]["Statement"] for a in st["Action"]}
    assert all(a.startswith("ec2:Describe") for a in plan_actions)
    assert {"ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress"} <= apply_actions

    # every target planned, one change per default group, with every rule it would remove
    assert sorted((t["account"], t["region"]) for t in plan["targets"]) == sorted(before)
    assert len(plan["changes"]) == len(before) == 4
    for change in plan["changes"]:
        groups = before[(change["account_id"], change["region"])]
        assert change["action"] == "revoke-rules"
        assert change["resource"] in groups
        assert ([r["SecurityGroupRuleId"] for r in change["before"]["rules"]]
                == [r["SecurityGroupRuleId"] for r in groups[change["resource"]]])

    # a dry run: nothing changed
    assert writes_since(emulator, mark) == []
    assert state(emulator.url, pair) == before


# --- apply without drift -----------------------------------------------------------------------

def test_apply_without_drift_applies_exactly_the_saved_changes(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                               pair: list[str], tmp_path: Path) -> None:
    bystander = org.accounts["prod-app-1"]
    plan = save_plan(cli, tmp_path / "plan.json", pair, ("us-east-1",))
    untouched_before = {**state(emulator.url, pair, ("eu-west-1",)), **state(emulator.url, [bystander])}
    mark = len(emulator.requests())

    result = check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-accounts", ",".join(pair)), 0)

    assert f"the live plan equals the saved plan {plan['run_id']}" in result.stderr
    assert result.stdout.count("applied: ") == 2
    # the planned groups are empty now
    for account in pair:
        assert all(rules == [] for rules in default_groups(emulator.url, account, "us-east-1").values())
    # the region the plan did not cover, and the account it did not cover, are untouched
    assert {**state(emulator.url, pair, ("eu-west-1",)), **state(emulator.url, [bystander])} == untouched_before
    writes = writes_since(emulator, mark)
    assert writes and all(w["status"] == 200 for w in writes)
    assert {(w["account"], w["region"]) for w in writes} == {(a, "us-east-1") for a in pair}
    # exactly the saved rule ids were revoked
    saved_ids = sorted(r["SecurityGroupRuleId"] for c in plan["changes"] for r in c["before"]["rules"])
    journal = [json.loads(line) for path in (cli.home / "state" / "orgrunner" / "journal").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    applied = [e["change"] for e in journal if e["status"] == "applied"]
    assert sorted(r["SecurityGroupRuleId"] for c in applied for r in c["before"]["rules"]) == saved_ids
    start = [e for e in cli.audit() if e["event"] == "run-start"][-1]
    assert start["command"] == "apply"


# --- drift -------------------------------------------------------------------------------------

def _add_rule(url: str, account: str, region: str) -> str:
    group_id = only_group(url, account, region)
    member_client(url, account, "ec2", region).authorize_security_group_ingress(
        GroupId=group_id, IpPermissions=[EXTRA_RULE])
    return group_id


def _revoke_one_rule(url: str, account: str, region: str) -> str:
    (group_id, rules), = default_groups(url, account, region).items()
    ingress = [r for r in rules if not r["IsEgress"]]
    member_client(url, account, "ec2", region).revoke_security_group_ingress(
        GroupId=group_id, SecurityGroupRuleIds=[ingress[0]["SecurityGroupRuleId"]])
    return group_id


@pytest.mark.parametrize("drift", [_add_rule, _revoke_one_rule], ids=["rule-added", "rule-revoked"])
def test_drift_refuses_the_whole_apply_with_a_diff(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                                   tmp_path: Path, drift: Any) -> None:
    save_plan(cli, tmp_path / "plan.json", pair)
    changed_group = drift(emulator.url, pair[0], "us-east-1")
    before = state(emulator.url, pair)
    mark = len(emulator.requests())

    result = check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-accounts", ",".join(pair)), 3)

    drift_lines = [line for line in result.stderr.splitlines() if line.startswith("drift:")]
    assert drift_lines, result.stderr
    assert all(changed_group in line for line in drift_lines), drift_lines
    assert any(pair[0] in line and "us-east-1" in line for line in drift_lines)
    assert "nothing applied" in result.stderr
    assert "applied: " not in result.stdout
    # nothing written anywhere: not in the drifted group, nor in the other account of the plan
    assert writes_since(emulator, mark) == []
    assert state(emulator.url, pair) == before
    assert [e for e in cli.audit() if e["event"] == "applied"] == []


def test_drift_in_a_target_planned_clean_is_refused(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                                   tmp_path: Path) -> None:
    """A target the saved plan found clean (no change) that now needs one is drift too."""
    clean, other = pair
    check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", clean, *selectors([clean], REGIONS)), 0)
    plan = save_plan(cli, tmp_path / "plan.json", pair)
    assert {c["account_id"] for c in plan["changes"]} == {other}
    assert {t["account"] for t in plan["targets"]} == set(pair)
    group = _add_rule(emulator.url, clean, "eu-west-1")
    before = state(emulator.url, pair)
    mark = len(emulator.requests())
    result = check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-accounts", ",".join(pair)), 3)
    drift_lines = [line for line in result.stderr.splitlines() if line.startswith("drift:")]
    assert len(drift_lines) == 1 and group in drift_lines[0] and "not in the saved plan" in drift_lines[0]
    assert writes_since(emulator, mark) == []
    assert state(emulator.url, pair) == before


def test_plan_edited_after_review_is_refused(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                             tmp_path: Path) -> None:
    """Dropping a change from the saved plan (say, to "skip" one group) does not make apply skip
    it: the file is no longer the plan its run saved; and even approved as it now is (its digest
    given with --confirm-plan), the live plan no longer equals it."""
    path = tmp_path / "plan.json"
    plan = save_plan(cli, path, pair)
    dropped = plan["changes"].pop()
    path.write_text(json.dumps(plan))
    before = state(emulator.url, pair)
    mark = len(emulator.requests())
    result = check(cli.run("apply", str(path), "--confirm-accounts", ",".join(pair)), 3)
    assert f"differs from the plan run {plan['run_id']} saved: its changes or other content" in result.stderr
    result = check(cli.run("apply", str(path), "--confirm-plan", digest(plan)), 3)
    assert any(line.startswith("drift:") and dropped["resource"] in line for line in result.stderr.splitlines())
    assert writes_since(emulator, mark) == []
    assert state(emulator.url, pair) == before


def test_plan_from_another_task_version_is_refused(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                                   tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    plan = save_plan(cli, path, pair)
    plan["task_version"] = "0"
    path.write_text(json.dumps(plan))
    before = state(emulator.url, pair)
    mark = len(emulator.requests())
    result = check(cli.run("apply", str(path), "--confirm-accounts", ",".join(pair)), 3)
    assert "task_version 0 (saved 1)" in result.stderr and "nothing applied" in result.stderr
    result = check(cli.run("apply", str(path), "--confirm-plan", digest(plan)), 3)  # approved, yet another version
    assert "version 0" in result.stderr and "nothing applied" in result.stderr
    assert writes_since(emulator, mark) == []
    assert state(emulator.url, pair) == before


# --- bad plan files ----------------------------------------------------------------------------

def _valid_plan() -> dict[str, Any]:
    return {"format": "orgrunner-plan/1", "run_id": "20261129T190000Z-1a2b3c", "task": "strip-default-sg",
            "task_version": "1", "caller": "", "role_name": "OrganizationAccountAccessRole",
            "regions": ["us-east-1"], "policies": {}, "targets": [], "changes": []}


BAD_PLANS: dict[str, str | None] = {
    "missing-file": None,
    "empty": "",
    "not-json": "{this is not json",
    "json-list": "[1, 2, 3]",
    "json-null": "null",
    "other-format": json.dumps({**_valid_plan(), "format": "something-else/9"}),
    "no-changes-key": json.dumps({k: v for k, v in _valid_plan().items() if k != "changes"}),
    "target-without-region": json.dumps({**_valid_plan(), "targets": [{"account": "111122223333"}]}),
    "targets-not-objects": json.dumps({**_valid_plan(), "targets": ["111122223333"]}),
    "change-with-unknown-field": json.dumps({**_valid_plan(), "changes": [{"account_id": "1", "bogus": 1}]}),
    "no-targets": json.dumps(_valid_plan()),
    "bad-account-id": json.dumps({**_valid_plan(), "targets": [{"account": "12", "region": "us-east-1"}]}),
    "bad-region": json.dumps({**_valid_plan(), "regions": ["moon-1"],
                              "targets": [{"account": "111122223333", "region": "moon-1"}]}),
    "not-utf8": "\udcff\udcfe",
}


@pytest.mark.parametrize("name", list(BAD_PLANS))
def test_bad_plan_file_is_one_line_and_exit_2(cli: Cli, emulator: EmulatorClient, tmp_path: Path, name: str) -> None:
    path = tmp_path / "plan.json"
    content = BAD_PLANS[name]
    if content is not None:
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
    mark = len(emulator.requests())
    result = check(cli.run("apply", str(path), "--confirm-accounts", "111122223333"), 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("orgrunner: ")
    assert result.stdout == ""
    assert emulator.requests()[mark:] == []  # checked before any AWS call


def test_unwritable_plan_out_is_bad_input_before_any_aws_call(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                                              tmp_path: Path) -> None:
    mark = len(emulator.requests())
    plan_out = tmp_path / "no-such-dir" / "p.json"
    result = check(cli.run("run", "strip-default-sg", "--dry-run", "--plan-out", str(plan_out),
                           *selectors(pair, ("us-east-1",))), 2)
    lines = [line for line in result.stderr.splitlines() if line.startswith("orgrunner: ")]
    assert len(lines) == 1 and "--plan-out" in lines[0]
    assert emulator.requests()[mark:] == []


# --- confirmation ------------------------------------------------------------------------------

def test_apply_without_confirmation_and_no_terminal_is_refused(cli: Cli, emulator: EmulatorClient, pair: list[str],
                                                               tmp_path: Path) -> None:
    save_plan(cli, tmp_path / "plan.json", pair)
    before = state(emulator.url, pair)
    mark = len(emulator.requests())
    # even with the account ids on stdin: without a terminal nothing is read as a confirmation
    result = check(cli.run("apply", str(tmp_path / "plan.json"), stdin=" ".join(pair) + "\n"), 3)
    assert "--confirm-accounts" in result.stderr and "nothing applied" in result.stderr
    assert writes_since(emulator, mark) == []
    assert state(emulator.url, pair) == before


@pytest.mark.parametrize("listed", ["first-only", "plus-stranger"])
def test_apply_with_accounts_that_do_not_match_is_refused(cli: Cli, emulator: EmulatorClient, org: SandboxOrg,
                                                          pair: list[str], tmp_path: Path, listed: str) -> None:
    save_plan(cli, tmp_path / "plan.json", pair)
    confirm = [pair[0]] if listed == "first-only" else [*pair, org.accounts["prod-app-1"]]
    before = state(emulator.url, pair)
    mark = len(emulator.requests())
    result = check(cli.run("apply", str(tmp_path / "plan.json"), "--confirm-accounts", ",".join(confirm)), 3)
    assert "--confirm-accounts" in result.stderr and "nothing applied" in result.stderr
    assert (pair[1] if listed == "first-only" else org.accounts["prod-app-1"]) in result.stderr
    assert writes_since(emulator, mark) == []
    assert state(emulator.url, pair) == before
