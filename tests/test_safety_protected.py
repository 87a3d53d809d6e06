"""Safety layer 5: protected accounts.

`protected_accounts` in the settings file holds ids (never targeted) and name patterns (opened
only by `--include-protected`, and then only with their own confirmation: the names typed at a
terminal, or the ids in `--confirm-protected`). Every protected account left out is reported
with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pexpect
import pytest

from orgrunner.sandbox.org import SandboxOrg, created_account_id
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, aws_client, default_rule_ids, member_client

REGION = "us-east-1"


def write_config(tmp_path: Path, protected: str) -> str:
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    path = folder / "orgrunner.yaml"
    path.write_text(f"protected_accounts: {protected}\n")
    return str(path)


@pytest.fixture
def config(tmp_path: Path, org: SandboxOrg) -> str:
    """security-audit protected by id; prod-app-1..3 by the name pattern prod-*."""
    return write_config(tmp_path, f'{{ids: ["{org.accounts["security-audit"]}"], name_patterns: ["prod-*"]}}')


def default_rules(emulator: EmulatorClient, account: str, region: str = REGION) -> list[str]:
    return default_rule_ids(emulator.url, account, region)


def planned_accounts(stdout: str) -> set[str]:
    """The accounts with changes in the plan's summary (its rows: account, name, changes, ...)."""
    return {m[1] for m in re.finditer(r"^  (\d{12}) \S+ +([1-9]\d*) ", stdout, re.M)}


def assumed_accounts(emulator: EmulatorClient) -> set[str]:
    return {r["target_account"] for r in emulator.requests("sts", "AssumeRole")
            if (r["params"]["RoleSessionName"] or "").startswith("or.")}


def skipped(stderr: str) -> dict[str, str]:
    """account id -> the reason it was left out, from the `skipped ID (NAME): REASON` lines."""
    return {m[1]: m[2] for m in re.finditer(r"^skipped (\d{12}) \(.*?\): (.*)$", stderr, re.M)}


def ids(org: SandboxOrg, *names: str) -> list[str]:
    return [org.accounts[n] for n in names]


def selectors(accounts: list[str]) -> list[str]:
    return [arg for a in accounts for arg in ("--account", a)]


# --- never targeted unless asked for ---------------------------------------------------------


def test_protected_accounts_are_left_out_and_said_why(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient) -> None:
    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION, "--config", config)

    assert result.returncode == 0, result.stdout + result.stderr
    protected = ids(org, "security-audit", "prod-app-1", "prod-app-2", "prod-app-3")
    others = set(org.accounts.values()) - set(protected)
    assert planned_accounts(result.stdout) == others
    assert assumed_accounts(emulator) == others  # never even assumed
    reasons = skipped(result.stderr)
    audit = org.accounts["security-audit"]
    assert f"skipped {audit} (security-audit): protected" in result.stderr
    assert "protected_accounts" in reasons[audit]
    for name in ("prod-app-1", "prod-app-2", "prod-app-3"):
        assert f"skipped {org.accounts[name]} ({name}): protected" in result.stderr
        assert "'prod-*'" in reasons[org.accounts[name]] and "--include-protected" in reasons[org.accounts[name]]


def test_accounts_command_reports_protected_accounts(cli: Cli, org: SandboxOrg, config: str) -> None:
    result = cli.run("accounts", "--config", config)

    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if re.match(r"^\d{12} ", line)}
    assert not listed & set(ids(org, "security-audit", "prod-app-1"))
    assert f"skipped {org.accounts['prod-app-1']} (prod-app-1): protected" in result.stderr


def test_short_form_list_of_ids(cli: Cli, org: SandboxOrg, tmp_path: Path, emulator: EmulatorClient) -> None:
    dev, sandbox = ids(org, "dev-app-1", "sandbox-1")
    config = write_config(tmp_path, f'["{dev}"]')

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION, "--config", config,
                     *selectors([dev, sandbox]), "--include-protected")

    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_accounts(result.stdout) == {sandbox}
    assert f"skipped {dev} (dev-app-1): protected" in result.stderr
    assert dev not in assumed_accounts(emulator)


def test_explicitly_selected_protected_account_is_still_skipped(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient) -> None:
    audit = org.accounts["security-audit"]

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION, "--config", config,
                     "--account", audit, "--include-protected")

    assert f"skipped {audit} (security-audit): protected" in result.stderr
    assert planned_accounts(result.stdout) == set()
    assert assumed_accounts(emulator) == set()


def test_include_protected_opens_name_patterns_but_never_ids(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient) -> None:
    chosen = ids(org, "security-audit", "prod-app-1", "dev-app-1")

    result = cli.run("run", "strip-default-sg", "--dry-run", "--region", REGION, "--config", config,
                     *selectors(chosen), "--include-protected")

    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_accounts(result.stdout) == set(ids(org, "prod-app-1", "dev-app-1"))
    assert f"skipped {org.accounts['security-audit']} (security-audit): protected" in result.stderr
    assert org.accounts["security-audit"] not in assumed_accounts(emulator)


def test_protected_config_is_validated(cli: Cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, '{ids: ["12345"]}')
    result = cli.run("run", "strip-default-sg", "--dry-run", "--config", config)
    assert result.returncode == 2
    assert "12345" in result.stderr and "orgrunner.yaml" in result.stderr


# --- armed, without a terminal -----------------------------------------------------------------


@pytest.mark.parametrize("confirm_protected", [None, "dev", "both"])
def test_armed_without_terminal_needs_the_protected_confirmation(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient, confirm_protected: str | None) -> None:
    prod, dev = ids(org, "prod-app-1", "dev-app-1")
    before = {a: default_rules(emulator, a) for a in (prod, dev)}
    extra: list[str] = []
    if confirm_protected == "dev":  # names an account that is not the protected one
        extra = ["--confirm-protected", dev]
    elif confirm_protected == "both":  # more than the protected accounts with changes
        extra = ["--confirm-protected", f"{prod},{dev}"]

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", f"{prod},{dev}", *extra,
                     "--region", REGION, "--config", config, *selectors([prod, dev]), "--include-protected")

    assert result.returncode == 3, result.stdout + result.stderr
    assert "protected" in result.stderr and "nothing applied" in result.stderr
    assert {a: default_rules(emulator, a) for a in (prod, dev)} == before


def test_armed_without_terminal_applies_with_both_confirmations(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient) -> None:
    prod, dev = ids(org, "prod-app-1", "dev-app-1")

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", f"{prod},{dev}",
                     "--confirm-protected", prod, "--region", REGION, "--config", config,
                     *selectors([prod, dev]), "--include-protected")

    assert result.returncode == 0, result.stdout + result.stderr
    assert default_rules(emulator, prod) == [] and default_rules(emulator, dev) == []


def test_protected_confirmation_alone_does_not_confirm_the_run(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient) -> None:
    prod, dev = ids(org, "prod-app-1", "dev-app-1")
    before = {a: default_rules(emulator, a) for a in (prod, dev)}

    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-protected", prod, "--region", REGION,
                     "--config", config, *selectors([prod, dev]), "--include-protected")

    assert result.returncode == 3, result.stdout + result.stderr
    assert {a: default_rules(emulator, a) for a in (prod, dev)} == before


def test_confirm_protected_is_not_needed_without_protected_changes(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient) -> None:
    dev = org.accounts["dev-app-1"]
    result = cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", dev, "--region", REGION,
                     "--config", config, "--account", dev, "--include-protected")
    assert result.returncode == 0, result.stdout + result.stderr
    assert default_rules(emulator, dev) == []


# --- armed, at a terminal ----------------------------------------------------------------------


def spawn_armed(cli: Cli, config: str, accounts: list[str]) -> Any:
    return cli.spawn("run", "strip-default-sg", "--arm", "--region", REGION, "--config", config,
                     *selectors(accounts), "--include-protected")


def test_interactive_protected_names_are_typed_before_the_account_confirmation(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient) -> None:
    prod, dev = ids(org, "prod-app-1", "dev-app-1")

    child = spawn_armed(cli, config, [prod, dev])
    first = child.expect(["Protected accounts will change: type their names", "type the ids of the accounts"])
    assert first == 0, "the protected accounts must be confirmed first"
    child.sendline("prod-app-1")
    child.expect("type the ids of the accounts")
    child.sendline(f"{dev} {prod}")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 0, child.before
    assert default_rules(emulator, prod) == [] and default_rules(emulator, dev) == []


@pytest.mark.parametrize("answer", ["", "{dev}", "{prod} {dev}", "prod-app-1 dev-app-1"])
def test_interactive_wrong_protected_names_refuse_the_run(
        cli: Cli, org: SandboxOrg, config: str, emulator: EmulatorClient, answer: str) -> None:
    prod, dev = ids(org, "prod-app-1", "dev-app-1")
    before = {a: default_rules(emulator, a) for a in (prod, dev)}

    child = spawn_armed(cli, config, [prod, dev])
    child.expect("Protected accounts will change: type their names")
    child.sendline(answer.format(prod=prod, dev=dev))  # the protected id alone would confirm
    index = child.expect(["type the ids of the accounts", pexpect.EOF])
    child.close()

    assert index == 1, "refused before the account confirmation is asked"
    assert child.exitstatus == 3
    assert {a: default_rules(emulator, a) for a in (prod, dev)} == before


def test_interactive_protected_name_with_a_space(
        cli: Cli, org: SandboxOrg, tmp_path: Path, emulator: EmulatorClient) -> None:
    orgs = aws_client(emulator.url, "organizations")
    account = created_account_id(orgs, orgs.create_account(AccountName="prod payments",
                                                            Email="prod-payments@sandbox.example"))
    ec2 = member_client(emulator.url, account, "ec2", REGION)
    group = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    config = write_config(tmp_path, '{name_patterns: ["prod *"]}')

    child = spawn_armed(cli, config, [account])
    child.expect("Protected accounts will change: type their names")
    child.sendline("prod payments")
    index = child.expect(["type the ids of the accounts", pexpect.EOF])
    if index == 0:
        child.sendline(account)
        child.expect(pexpect.EOF)
    child.close()

    assert index == 0, child.before
    assert child.exitstatus == 0
    assert default_rules(emulator, account) == []
