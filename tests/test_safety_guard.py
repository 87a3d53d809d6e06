"""Safety layer 3, the client-side call guard, and layer 2 behind it when the guard is bypassed.

Broken tasks in tests/broken_tasks/ try to write while planning. The guard must stop them before
any request leaves the machine (the emulator records nothing); a task that builds its own
unguarded client must still be refused by the emulated AWS, because the plan session policy
holds reads only. No rule is removed either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from orgrunner import aws
from orgrunner.errors import CallNotAllowed
from orgrunner.safety.guard import CallGuard
from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, default_rule_ids

BROKEN = str(Path(__file__).parent / "broken_tasks")
REGION = "us-east-1"


def default_rules(emulator: EmulatorClient, account: str, region: str = REGION) -> list[str]:
    return default_rule_ids(emulator.url, account, region)


def revokes(emulator: EmulatorClient) -> list[dict[str, Any]]:
    return [r for r in emulator.requests("ec2") if r["operation"].startswith("RevokeSecurityGroup")]


def failed_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "FAILED:" in line]


# --- end to end: a task that writes while planning ------------------------------------------


# Each end-to-end case runs in one process and over two planning worker processes (`--processes`):
# the guard and the session policy must hold in a worker exactly as in the main process.
PROCESSES = pytest.mark.parametrize("processes", ["1", "2"])


def planned_in(result: Any, processes: str) -> None:
    assert ("planning in 2 processes" in result.stderr) == (processes == "2"), result.stderr


@PROCESSES
def test_guard_stops_a_write_in_the_plan_before_it_leaves_the_machine(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, processes: str) -> None:
    accounts = [org.accounts["dev-app-1"], org.accounts["sandbox-1"]]
    before = {a: default_rules(emulator, a) for a in accounts}

    result = cli.run("run", "writes-in-plan", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     *[arg for a in accounts for arg in ("--account", a)], "--processes", processes)

    assert result.returncode == 1, result.stderr
    planned_in(result, processes)
    failed = failed_lines(result.stdout)
    assert len(failed) == len(accounts), result.stdout
    for account in accounts:
        line = next(f for f in failed if f.startswith(account))
        assert "'writes-in-plan'" in line and "ec2:RevokeSecurityGroupIngress" in line, line
        assert "plan phase" in line, line
    assert "0 change(s)" in result.stdout and f"{len(accounts)} failed" in result.stdout
    assert revokes(emulator) == []  # nothing left the machine
    assert {a: default_rules(emulator, a) for a in accounts} == before


def test_guard_stops_a_write_in_the_plan_of_an_armed_run_too(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["dev-app-1"]
    before = default_rules(emulator, account)

    result = cli.run("run", "writes-in-plan", "--tasks-dir", BROKEN, "--arm", "--confirm-accounts", account,
                     "--region", REGION, "--account", account)

    assert result.returncode == 1, result.stderr
    assert "ec2:RevokeSecurityGroupIngress" in result.stdout and "plan phase" in result.stdout
    assert revokes(emulator) == []
    assert default_rules(emulator, account) == before


def test_guard_refuses_an_undeclared_read(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["sandbox-1"]

    result = cli.run("run", "undeclared-read", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     "--account", account)

    assert result.returncode == 1, result.stderr
    [line] = failed_lines(result.stdout)
    assert "'undeclared-read'" in line and "ec2:DescribeInstances" in line and "did not declare" in line, line
    assert "plan phase" in line, line
    assert emulator.requests("ec2", "DescribeVpcs"), "the declared read went through"
    assert emulator.requests("ec2", "DescribeInstances") == []


def test_a_refusal_the_task_swallows_still_fails_the_target(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["sandbox-1"]

    result = cli.run("run", "swallows-refusal", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     "--account", account)

    assert revokes(emulator) == []  # the guard did stop it...
    assert result.returncode == 1, result.stdout  # ...but the run must not report success
    [line] = failed_lines(result.stdout)
    assert "ec2:RevokeSecurityGroupIngress" in line


def test_a_call_from_a_thread_the_engine_did_not_start_is_refused_before_it_is_sent(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    account = org.accounts["sandbox-1"]
    mark = len(emulator.requests())

    result = cli.run("run", "calls-from-own-thread", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     "--account", account)

    assert result.returncode == 1, result.stdout
    [line] = failed_lines(result.stdout)
    assert "ec2:DescribeVpcs" in line and "outside any task target" in line, line
    sent = [r for r in emulator.requests()[mark:] if r["operation"] == "DescribeVpcs"]
    assert sent == []  # nothing left the machine, no account signed it


# --- the guard bypassed: the session policy still refuses (server side) ---------------------


@PROCESSES
def test_bypassing_the_guard_is_refused_by_the_plan_session_policy(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, processes: str) -> None:
    accounts = [org.accounts["dev-app-1"], org.accounts["sandbox-1"]]
    before = {a: default_rules(emulator, a) for a in accounts}
    emulator.enforce_session_policies(True)

    result = cli.run("run", "unguarded-write", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     *[arg for a in accounts for arg in ("--account", a)], "--processes", processes)

    assert result.returncode == 1, result.stderr
    planned_in(result, processes)
    failed = failed_lines(result.stdout)
    assert len(failed) == len(accounts), result.stdout
    assert all("RevokeSecurityGroupIngress" in f and "UnauthorizedOperation" in f for f in failed), failed
    sent = revokes(emulator)
    assert len(sent) == len(accounts), "the rogue client's request did reach the emulator"
    assert {r["status"] for r in sent} == {403}
    assert {r["account"] for r in sent} == set(accounts)
    assert {a: default_rules(emulator, a) for a in accounts} == before


def test_bypassing_the_guard_does_write_when_nothing_server_side_refuses(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """The control experiment: without session-policy enforcement the rogue client's revoke
    succeeds, so the test above passes only because of the session policy."""
    account = org.accounts["sandbox-1"]
    before = default_rules(emulator, account)

    result = cli.run("run", "unguarded-write", "--tasks-dir", BROKEN, "--dry-run", "--region", REGION,
                     "--account", account)

    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["status"] for r in revokes(emulator)] == [200]
    assert len(default_rules(emulator, account)) == len(before) - 1


def test_declared_actions_suffice_under_enforced_session_policies(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    """strip-default-sg's declarations are complete: a dry run and an armed run both succeed
    when the emulator enforces the session policies as AWS does."""
    emulator.enforce_session_policies(True)
    accounts = [org.accounts["dev-app-1"], org.accounts["sandbox-1"]]
    selectors = [arg for a in accounts for arg in ("--account", a)]

    dry = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION, *selectors)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "2 change(s) in 2 account(s); 0 failed" in dry.stdout

    armed = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", ",".join(accounts),
                    "--region", REGION, *selectors)
    assert armed.returncode == 0, armed.stdout + armed.stderr
    assert "2 applied; 0 target(s) failed" in armed.stdout
    assert {a: default_rules(emulator, a) for a in accounts} == {a: [] for a in accounts}
    denied = [r for r in emulator.requests() if r["status"] == 403]
    assert denied == []


# --- unit level: CallGuard on a real botocore client against the emulator -------------------


def ec2_client(region: str = REGION) -> Any:
    return aws.Session.from_profile(None).client("ec2", region)


def test_call_guard_plan_phase_permits_declared_reads_only(emulator: EmulatorClient) -> None:
    ec2 = CallGuard("unit", "plan", ("ec2:DescribeVpcs", "ec2:DescribeSecurityGroups")).install(ec2_client())

    assert ec2.describe_vpcs()["Vpcs"]
    assert list(ec2.get_paginator("describe_security_groups").paginate())
    with pytest.raises(CallNotAllowed, match=r"'unit' called ec2:DescribeInstances, which it did not declare "
                                             r"for the plan phase"):
        ec2.describe_instances()
    with pytest.raises(CallNotAllowed, match="did not declare"):
        list(ec2.get_paginator("describe_instances").paginate())
    with pytest.raises(CallNotAllowed, match=r"ec2:RevokeSecurityGroupIngress, a write, during the plan phase"):
        ec2.revoke_security_group_ingress(GroupId="sg-12345678", SecurityGroupRuleIds=["sgr-12345678"])

    ops = [r["operation"] for r in emulator.requests("ec2")]
    assert "DescribeVpcs" in ops and "DescribeSecurityGroups" in ops
    assert "DescribeInstances" not in ops and "RevokeSecurityGroupIngress" not in ops


def test_call_guard_refuses_a_declared_write_during_the_plan_phase(emulator: EmulatorClient) -> None:
    """Even a write the task declared (for apply) is refused while planning."""
    guard = CallGuard("unit", "plan", ("ec2:DescribeVpcs", "ec2:RevokeSecurityGroupIngress"))
    ec2 = guard.install(ec2_client())
    with pytest.raises(CallNotAllowed, match="a write, during the plan phase"):
        ec2.revoke_security_group_ingress(GroupId="sg-12345678", SecurityGroupRuleIds=["sgr-12345678"])
    assert emulator.requests("ec2") == []


def test_call_guard_apply_phase_permits_declared_writes(emulator: EmulatorClient) -> None:
    ec2 = CallGuard("unit", "apply", ("ec2:DescribeVpcs", "ec2:RevokeSecurityGroupIngress")).install(ec2_client())

    with pytest.raises(ClientError):  # the guard let it through: the emulator answered (no such group)
        ec2.revoke_security_group_ingress(GroupId="sg-12345678", SecurityGroupRuleIds=["sgr-12345678"])
    assert [r["operation"] for r in emulator.requests("ec2")] == ["RevokeSecurityGroupIngress"]
    with pytest.raises(CallNotAllowed, match="ec2:RevokeSecurityGroupEgress, which it did not declare for the "
                                             "apply phase"):
        ec2.revoke_security_group_egress(GroupId="sg-12345678", SecurityGroupRuleIds=["sgr-12345678"])
    with pytest.raises(CallNotAllowed, match="ec2:DeleteVpc"):
        ec2.delete_vpc(VpcId="vpc-12345678")
    assert len(emulator.requests("ec2")) == 1


def test_call_guard_is_per_client(emulator: EmulatorClient) -> None:
    """Installing a guard on one client does not restrict another (the guard is per client)."""
    guarded = CallGuard("unit", "plan", ("ec2:DescribeVpcs",)).install(ec2_client())
    other = ec2_client()
    with pytest.raises(CallNotAllowed):
        guarded.describe_instances()
    other.describe_instances()
    assert [r["operation"] for r in emulator.requests("ec2")] == ["DescribeInstances"]


def test_call_guard_maps_operations_to_iam_actions(emulator: EmulatorClient) -> None:
    """s3control's GetPublicAccessBlock is authorised by s3:GetAccountPublicAccessBlock."""
    session = aws.Session.from_profile(None)
    allowed = CallGuard("unit", "plan", ("s3:GetAccountPublicAccessBlock",)).install(
        session.client("s3control", REGION))
    with pytest.raises(ClientError) as excinfo:  # passed the guard: moto answers, no configuration yet
        allowed.get_public_access_block(AccountId="123456789012")
    assert "NoSuchPublicAccessBlockConfiguration" in str(excinfo.value)

    refused = CallGuard("unit", "plan", ("s3:GetPublicAccessBlock",)).install(session.client("s3control", REGION))
    with pytest.raises(CallNotAllowed, match="s3:GetAccountPublicAccessBlock"):
        refused.get_public_access_block(AccountId="123456789012")
    with pytest.raises(CallNotAllowed, match="s3:PutAccountPublicAccessBlock, a write"):
        refused.put_public_access_block(AccountId="123456789012",
                                        PublicAccessBlockConfiguration={"BlockPublicAcls": True})
    assert len(emulator.requests(operation="GetPublicAccessBlock")) == 1
    assert emulator.requests(operation="PutPublicAccessBlock") == []


def test_call_guard_tells_bucket_from_account_public_access_block(emulator: EmulatorClient) -> None:
    """s3's (bucket) GetPublicAccessBlock is s3:GetBucketPublicAccessBlock in AWS's data, not the
    account-level action: a task declaring only the account action cannot read a bucket's block."""
    session = aws.Session.from_profile(None)
    account_only = CallGuard("unit", "plan", ("s3:GetAccountPublicAccessBlock",)).install(session.client("s3", REGION))
    with pytest.raises(CallNotAllowed, match="called s3:GetBucketPublicAccessBlock, which it did not declare"):
        account_only.get_public_access_block(Bucket="any-bucket")
    with pytest.raises(CallNotAllowed, match="s3:PutBucketPublicAccessBlock, a write"):
        account_only.delete_public_access_block(Bucket="any-bucket")
    assert emulator.requests(service="s3") == []


def test_call_guard_checks_every_action_an_operation_requires(emulator: EmulatorClient) -> None:
    """s3 CopyObject needs s3:GetObject and s3:PutObject: declaring one of them is not enough."""
    session = aws.Session.from_profile(None)
    s3 = CallGuard("unit", "apply", ("s3:PutObject",)).install(session.client("s3", REGION))
    with pytest.raises(CallNotAllowed, match="called s3:GetObject, which it did not declare for the apply phase"):
        s3.copy_object(Bucket="b", Key="k", CopySource="b/other")
    assert emulator.requests(service="s3") == []
