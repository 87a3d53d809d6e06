"""Armed runs: exactly the planned rules go, in the targeted accounts and regions only; a second
run finds nothing to do; one account that fails fails alone, with exit code 1."""

from __future__ import annotations

import json

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient
from tests.test_run_dry import (
    SEEDED,
    assume_calls,
    default_sg_rules,
    new_requests,
    ok,
    planned,
    result_lines,
    snapshot,
    writes,
)

TASK = "strip-default-sg"


def test_armed_run_removes_exactly_the_planned_rules_in_the_targeted_region(cli: Cli, org: SandboxOrg,
                                                                           emulator: EmulatorClient) -> None:
    everyone = list(org.accounts.values())
    targeted = sorted(org.accounts[n] for n in ("dev-app-1", "dev-app-2", "sandbox-1", "sandbox-2"))
    before = snapshot(emulator.url, everyone)
    mark = len(emulator.requests())

    result = ok(cli.run("run", TASK, "--arm", "--ou", org.ous["NonProd"], "--region", "us-east-1",
                        "--confirm-accounts", ",".join(targeted)))
    requests = new_requests(emulator, mark)

    assert "Plan: 4 account(s), 1 region(s), 4 target(s): 4 change(s) in 4 account(s); 0 failed" in result.stdout
    assert "Apply: 4 target(s) in 4 account(s): 4 applied; 0 target(s) failed." in result.stdout
    after = snapshot(emulator.url, everyone)
    for (account, region), rules in before.items():
        if account in targeted and region == "us-east-1":
            assert after[(account, region)] == {}, (account, region)
        else:
            assert after[(account, region)] == rules, (account, region)

    # the only writes: revokes of exactly the planned rule ids, in the targeted accounts and region
    calls = writes(requests)
    assert calls and {r["operation"] for r in calls} <= {"RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress"}
    assert {(r["account"], r["region"]) for r in calls} == {(a, "us-east-1") for a in targeted}
    assert all(r["status"] == 200 for r in calls)


def test_armed_run_in_two_regions_leaves_a_third_region_alone(cli: Cli, org: SandboxOrg,
                                                              emulator: EmulatorClient) -> None:
    account = org.accounts["prod-app-3"]
    elsewhere = default_sg_rules(emulator.url, account, ["us-west-2"])["us-west-2"]
    assert elsewhere  # moto's default group allows all egress, as AWS's does
    before = snapshot(emulator.url, [account])
    mark = len(emulator.requests())

    result = ok(cli.run("run", TASK, "--arm", "--account", account, "--region", "us-east-1", "--region", "eu-west-1",
                        "--confirm-accounts", account))
    requests = new_requests(emulator, mark)

    assert "Apply: 2 target(s) in 1 account(s): 2 applied; 0 target(s) failed." in result.stdout
    assert snapshot(emulator.url, [account]) == {k: {} for k in before}
    assert default_sg_rules(emulator.url, account, ["us-west-2"])["us-west-2"] == elsewhere
    calls = writes(requests)
    assert {r["region"] for r in calls} == set(SEEDED)
    # per account: one AssumeRole for the plan and one for the apply, whatever the number of regions
    assumed = assume_calls(requests)
    assert [c["target_account"] for c in assumed] == [account, account]


def test_apply_phase_session_policy_adds_only_the_declared_writes(cli: Cli, org: SandboxOrg,
                                                                 emulator: EmulatorClient) -> None:
    """Session policies enforced as AWS does: the plan session reads only; the apply session can
    revoke, and the armed run needs nothing more."""
    account = org.accounts["dev-app-2"]
    emulator.enforce_session_policies(True)
    mark = len(emulator.requests())
    ok(cli.run("run", TASK, "--arm", "--account", account, "--region", "eu-west-1", "--confirm-accounts", account))
    requests = new_requests(emulator, mark)
    assert [r for r in requests if r["status"] == 403] == []
    plan_call, apply_call = assume_calls(requests)

    def actions(call: dict[str, object]) -> set[str]:
        params = call["params"]
        assert isinstance(params, dict)
        return {a for st in json.loads(params["Policy"])["Statement"] for a in st["Action"]}

    added = actions(apply_call) - actions(plan_call)
    assert added == {"ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress"}
    assert actions(plan_call) <= actions(apply_call)
    assert plan_call["params"]["RoleSessionName"] == apply_call["params"]["RoleSessionName"]
    assert default_sg_rules(emulator.url, account, ["eu-west-1"])["eu-west-1"] == {}


def test_armed_run_is_idempotent(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    targeted = [org.accounts["prod-app-1"], org.accounts["security-audit"]]
    selectors = [x for a in targeted for x in ("--account", a)]
    ok(cli.run("run", TASK, "--arm", "--region", "us-east-1", *selectors, "--confirm-accounts", ",".join(targeted)))

    again = ok(cli.run("run", TASK, "--dry-run", "--region", "us-east-1", *selectors, "--details", "all"))
    assert planned(again.stdout) == {} and result_lines(again.stdout) == []
    assert "0 change(s) in 0 account(s)" in again.stdout and "nothing to do" in again.stdout

    mark = len(emulator.requests())
    armed_again = ok(cli.run("run", TASK, "--arm", "--region", "us-east-1", *selectors,
                             "--confirm-accounts", ",".join(targeted)))
    assert "nothing to apply" in armed_again.stdout
    assert writes(new_requests(emulator, mark)) == []
    # the eu-west-1 side of the same accounts still has its rules, and shows up in a plan
    other = ok(cli.run("run", TASK, "--region", "eu-west-1", *selectors))
    assert "2 change(s) in 2 account(s)" in other.stdout


def test_role_that_cannot_be_assumed_fails_alone_and_the_others_are_applied(cli: Cli, org: SandboxOrg,
                                                                          emulator: EmulatorClient) -> None:
    denied = org.accounts["sandbox-1"]
    nonprod = sorted(org.accounts[n] for n in ("dev-app-1", "dev-app-2", "sandbox-1", "sandbox-2"))
    others = [a for a in nonprod if a != denied]
    before = snapshot(emulator.url, nonprod, ["us-east-1"])
    emulator.add_rule(operation="AssumeRole", target_account=denied, code="AccessDenied",
                      message="User is not authorized to perform sts:AssumeRole", status=403)
    mark = len(emulator.requests())

    # the operator confirms every target; the denied one has no planned changes, so it is not applied
    result = ok(cli.run("run", TASK, "--arm", "--ou", org.ous["NonProd"], "--region", "us-east-1",
                        "--confirm-accounts", ",".join(nonprod)), 1)

    failed = [(a, rest) for a, _, rest in result_lines(result.stdout) if "FAILED" in rest]
    assert [a for a, _ in failed] == [denied]
    assert "AccessDenied" in failed[0][1] and f"arn:aws:iam::{denied}:role/" in failed[0][1]
    assert "Plan: 4 account(s), 1 region(s), 4 target(s): 3 change(s) in 3 account(s); 1 failed" in result.stdout
    assert "Apply: 3 target(s) in 3 account(s): 3 applied; 0 target(s) failed." in result.stdout
    assert {r["account"] for r in writes(new_requests(emulator, mark))} == set(others)
    emulator.clear_rules()  # so that the test itself can look into the denied account
    after = snapshot(emulator.url, nonprod, ["us-east-1"])
    assert after[(denied, "us-east-1")] == before[(denied, "us-east-1")]
    assert all(after[(a, "us-east-1")] == {} for a in others)


def test_role_denied_with_a_confirmation_of_only_the_planned_accounts(cli: Cli, org: SandboxOrg,
                                                                       emulator: EmulatorClient) -> None:
    denied = org.accounts["prod-app-1"]
    emulator.add_rule(operation="AssumeRole", target_account=denied, code="AccessDenied",
                      message="User is not authorized to perform sts:AssumeRole", status=403)
    others = sorted(org.accounts[n] for n in ("prod-app-2", "prod-app-3"))
    result = ok(cli.run("run", TASK, "--arm", "--ou", org.ous["Prod"], "--region", "eu-west-1",
                        "--confirm-accounts", ",".join(others)), 1)
    assert "Apply: 2 target(s) in 2 account(s): 2 applied" in result.stdout
    emulator.clear_rules()
    assert default_sg_rules(emulator.url, denied, ["eu-west-1"])["eu-west-1"]
    assert all(default_sg_rules(emulator.url, a, ["eu-west-1"])["eu-west-1"] == {} for a in others)


def test_a_write_refused_in_one_account_fails_that_target_alone(cli: Cli, org: SandboxOrg,
                                                                emulator: EmulatorClient) -> None:
    broken = org.accounts["dev-app-1"]
    emulator.add_rule(operation="RevokeSecurityGroupIngress", account=broken, region="us-east-1",
                      code="UnauthorizedOperation", message="You are not authorized to perform this operation.",
                      status=403)
    targeted = sorted([broken, org.accounts["dev-app-2"]])
    before = snapshot(emulator.url, targeted, ["us-east-1"])
    result = ok(cli.run("run", TASK, "--arm", "--region", "us-east-1", *[x for a in targeted for x in ("--account", a)],
                        "--confirm-accounts", ",".join(targeted)), 1)
    assert "Apply: 2 target(s) in 2 account(s): 1 applied, 1 failed; 1 target(s) failed." in result.stdout
    failed = [rest for a, _, rest in result_lines(result.stdout) if a == broken and "FAILED" in rest]
    assert failed and "UnauthorizedOperation" in failed[0]
    after = snapshot(emulator.url, targeted, ["us-east-1"])
    assert after[(broken, "us-east-1")] == before[(broken, "us-east-1")]
    assert after[(org.accounts["dev-app-2"], "us-east-1")] == {}
