"""A first end-to-end check: a dry run over the seeded organization plans and changes nothing."""

from __future__ import annotations

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import member_client


def test_dry_run_plans_every_account_and_changes_nothing(cli: Cli, org: SandboxOrg) -> None:
    account = org.accounts["prod-app-1"]
    ec2 = member_client(cli.emulator.url, account, "ec2", "eu-west-1")
    before = ec2.describe_security_group_rules()["SecurityGroupRules"]

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", "us-east-1", "--region", "eu-west-1")

    assert result.returncode == 0, result.stderr
    assert "Plan: 8 account(s), 2 region(s), 16 target(s)" in result.stdout
    assert ec2.describe_security_group_rules()["SecurityGroupRules"] == before
