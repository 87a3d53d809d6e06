"""Account selection: --account, --ou (nested), --exclude, --tag, suspended and management accounts,
checked through `orgrunner accounts --format json` and through the accounts a `run` plans."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from orgrunner.sandbox.org import SandboxOrg, seed_organization
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, create_role
from tests.test_run_dry import planned as planned_targets

PROD = {"prod-app-1", "prod-app-2", "prod-app-3"}
DEV = {"dev-app-1", "dev-app-2"}
SANDBOX = {"sandbox-1", "sandbox-2"}
SECURITY = {"security-audit"}
ALL_MEMBERS = PROD | DEV | SANDBOX | SECURITY

Args = Callable[[SandboxOrg], tuple[str, ...]]


@pytest.fixture
def org(emulator: EmulatorClient) -> SandboxOrg:
    """The seeded organization without the security group rules (selection needs none): faster."""
    return seed_organization(emulator.url, regions=())


def listing(cli: Cli, *args: str) -> dict[str, Any]:
    result = cli.run("accounts", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def names(org: SandboxOrg, ids: set[str]) -> set[str]:
    by_id = {v: k for k, v in org.accounts.items()}
    by_id[org.management_account_id] = "management"
    by_id[org.suspended_account_id] = "retired-1"
    return {by_id[i] for i in ids}


def target_names(org: SandboxOrg, data: dict[str, Any]) -> set[str]:
    return names(org, {a["id"] for a in data["targets"]})


def skipped(data: dict[str, Any]) -> dict[str, str]:
    return {a["id"]: a["reason"] for a in data["skipped"]}


def planned(result: subprocess.CompletedProcess[str]) -> dict[str, set[str]]:
    """account id -> regions with a planned change in the plan's details (runs made with --details all)."""
    found: dict[str, set[str]] = {}
    for account, region in planned_targets(result.stdout):
        found.setdefault(account, set()).add(region)
    return found


def assumed(emulator: EmulatorClient, mark: int) -> list[str]:
    """Target accounts of the AssumeRole calls orgrunner made since `mark`."""
    return [r["target_account"] for r in emulator.requests()[mark:] if r["operation"] == "AssumeRole"]


# --- `orgrunner accounts --format json` ------------------------------------------------------------

SELECTIONS: dict[str, tuple[Args, set[str]]] = {
    "everything": (lambda o: (), ALL_MEMBERS),
    "accounts": (lambda o: ("--account", o.accounts["prod-app-2"], "--account", o.accounts["sandbox-1"]),
                 {"prod-app-2", "sandbox-1"}),
    "ou nested two levels": (lambda o: ("--ou", o.ous["Workloads"]), PROD | DEV | SANDBOX),
    "ou nested one level": (lambda o: ("--ou", o.ous["NonProd"]), DEV | SANDBOX),
    "ou leaf": (lambda o: ("--ou", o.ous["Sandbox"]), SANDBOX),
    "two ous": (lambda o: ("--ou", o.ous["Prod"], "--ou", o.ous["Security"]), PROD | SECURITY),
    "root": (lambda o: ("--ou", o.root_id), ALL_MEMBERS),
    "exclude": (lambda o: ("--exclude", o.accounts["dev-app-1"], "--exclude", o.accounts["sandbox-2"]),
                ALL_MEMBERS - {"dev-app-1", "sandbox-2"}),
    "ou and exclude": (lambda o: ("--ou", o.ous["Workloads"], "--exclude", o.accounts["sandbox-1"]),
                       PROD | DEV | {"sandbox-2"}),
    "tag": (lambda o: ("--tag", "env=prod"), PROD | SECURITY),
    "two tags, all must match": (lambda o: ("--tag", "env=prod", "--tag", "team=payments"), PROD),
    "two other tags": (lambda o: ("--tag", "env=dev", "--tag", "team=research"), SANDBOX),
    "two tags matching no account together": (lambda o: ("--tag", "env=prod", "--tag", "team=research"), set()),
    "tag and ou": (lambda o: ("--tag", "team=payments", "--ou", o.ous["NonProd"]), DEV),
    "tag values are case-sensitive": (lambda o: ("--tag", "env=Prod"), set()),
    "account outside the ou (both must hold)": (
        lambda o: ("--ou", o.ous["Prod"], "--account", o.accounts["dev-app-1"], "--account", o.accounts["prod-app-1"]),
        {"prod-app-1"}),
    "include management": (lambda o: ("--include-management",), ALL_MEMBERS | {"management"}),
}


def test_accounts_json_selects(cli: Cli, org: SandboxOrg) -> None:
    """Every selection case against one organization (the listings run a few at a time)."""

    def check(case: str) -> str | None:
        args, expected = SELECTIONS[case]
        data = listing(cli, *args(org))
        problems = []
        if target_names(org, data) != expected:
            problems.append(f"targets {sorted(target_names(org, data))} != {sorted(expected)}")
        if data["management_account_id"] != org.management_account_id:
            problems.append("wrong management account id")
        if org.suspended_account_id in {a["id"] for a in data["targets"]}:
            problems.append("the suspended account is a target")
        if any(a["state"] != "ACTIVE" for a in data["targets"]):
            problems.append("a target is not ACTIVE")
        return f"{case}: {'; '.join(problems)}" if problems else None

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(check, SELECTIONS) if f]
    assert failures == []


def test_accounts_json_reports_why_accounts_are_left_out(cli: Cli, org: SandboxOrg) -> None:
    excluded = org.accounts["dev-app-2"]
    data = listing(cli, "--exclude", excluded)
    reasons = skipped(data)
    assert set(reasons) == {org.management_account_id, org.suspended_account_id, excluded}
    assert "management account" in reasons[org.management_account_id]
    assert "--include-management" in reasons[org.management_account_id]
    assert reasons[org.suspended_account_id] == "not active (SUSPENDED)"
    assert "--exclude" in reasons[excluded]
    suspended = next(a for a in data["skipped"] if a["id"] == org.suspended_account_id)
    assert suspended["state"] == "SUSPENDED" and suspended["name"] == "retired-1"


def test_tags_are_shown_when_selecting_by_tag(cli: Cli, org: SandboxOrg) -> None:
    data = listing(cli, "--tag", "team=research")
    assert {a["name"]: a["tags"] for a in data["targets"]} == {
        "sandbox-1": {"env": "dev", "team": "research"},
        "sandbox-2": {"env": "dev", "team": "research"},
    }


def test_suspended_account_is_skipped_even_when_named_or_tagged(cli: Cli, org: SandboxOrg) -> None:
    # retired-1 sits in the Prod OU with env=prod, team=payments
    for args in (("--account", org.suspended_account_id), ("--ou", org.ous["Prod"]),
                 ("--tag", "env=prod", "--tag", "team=payments")):
        data = listing(cli, *args)
        assert org.suspended_account_id not in {a["id"] for a in data["targets"]}, args
        assert skipped(data).get(org.suspended_account_id) == "not active (SUSPENDED)", args


def test_management_account_named_explicitly_is_still_left_out(cli: Cli, org: SandboxOrg) -> None:
    data = listing(cli, "--account", org.management_account_id)
    assert data["targets"] == []
    assert "management account" in skipped(data)[org.management_account_id]
    data = listing(cli, "--account", org.management_account_id, "--include-management")
    assert [a["id"] for a in data["targets"]] == [org.management_account_id]


def test_exclude_wins_over_account(cli: Cli, org: SandboxOrg) -> None:
    one, two = org.accounts["prod-app-1"], org.accounts["prod-app-2"]
    data = listing(cli, "--account", one, "--account", two, "--exclude", two)
    assert [a["id"] for a in data["targets"]] == [one]
    assert "--exclude" in skipped(data)[two]


def test_account_not_in_the_organization_is_an_error(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("accounts", "--format", "json", "--account", "111122223333")
    assert result.returncode == 2
    assert "orgrunner: --account 111122223333: not an account of this organization" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_unknown_ou_is_an_error(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("accounts", "--ou", "ou-zzzz-zzzzzzzz")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("orgrunner: ")


def test_unknown_ou_error_names_the_ou(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("run", "strip-default-sg", "--region", "us-east-1", "--ou", org.ous["Prod"],
                     "--ou", "ou-zzzz-zzzzzzzz")
    assert result.returncode == 2
    assert "--ou ou-zzzz-zzzzzzzz" in result.stderr.strip().splitlines()[-1]


def test_accounts_table_lists_targets_and_skipped(cli: Cli, org: SandboxOrg) -> None:
    result = cli.run("accounts", "--ou", org.ous["Prod"])
    assert result.returncode == 0, result.stderr
    assert f"skipped {org.suspended_account_id} (retired-1): not active (SUSPENDED)" in result.stderr
    for name in PROD:
        assert f"{org.accounts[name]}  {name}" in result.stdout
    assert "3 target account(s), 1 left out." in result.stdout


def test_protected_accounts_from_config(cli: Cli, org: SandboxOrg) -> None:
    config = cli.home / "settings.yaml"
    config.write_text(
        "protected_accounts:\n"
        f"  ids: ['{org.accounts['security-audit']}']\n"
        "  name_patterns: ['prod-app-*']\n"
    )
    data = listing(cli, "--config", str(config))
    assert target_names(org, data) == DEV | SANDBOX
    reasons = skipped(data)
    assert "protected account" in reasons[org.accounts["security-audit"]]
    assert "--include-protected" in reasons[org.accounts["prod-app-1"]]
    # a name pattern opens with --include-protected; an id never does
    data = listing(cli, "--config", str(config), "--include-protected")
    assert target_names(org, data) == DEV | SANDBOX | PROD
    data = listing(cli, "--config", str(config), "--include-protected", "--account", org.accounts["security-audit"])
    assert data["targets"] == []


# --- the accounts a `run` plans ------------------------------------------------------------------

RUN_SELECTIONS: list[Any] = [
    pytest.param(lambda o: ("--account", o.accounts["dev-app-1"]), {"dev-app-1"}, id="account"),
    pytest.param(lambda o: ("--ou", o.ous["Workloads"]), PROD | DEV | SANDBOX, id="ou-nested"),
    pytest.param(lambda o: ("--ou", o.ous["NonProd"], "--exclude", o.accounts["dev-app-2"]),
                 {"dev-app-1"} | SANDBOX, id="ou-exclude"),
    pytest.param(lambda o: ("--tag", "env=prod"), PROD | SECURITY, id="tag"),
    pytest.param(lambda o: ("--tag", "env=prod", "--tag", "team=payments"), PROD, id="two-tags"),
    pytest.param(lambda o: ("--include-management", "--ou", o.root_id), ALL_MEMBERS | {"management"},
                 id="include-management"),
]


@pytest.mark.parametrize(("args", "expected"), RUN_SELECTIONS)
def test_run_plans_exactly_the_selected_accounts(cli: Cli, org: SandboxOrg, emulator: EmulatorClient,
                                                 args: Args, expected: set[str]) -> None:
    if "management" in expected:  # Organizations creates no such role there: it is deployed separately
        create_role(emulator.url, org.management_account_id, "OrganizationAccountAccessRole")
    mark = len(emulator.requests())
    result = cli.run("run", "strip-default-sg", "--region", "us-east-1", *args(org), "--details", "all")
    assert result.returncode == 0, result.stderr
    plan = planned(result)
    assert names(org, set(plan)) == expected
    assert all(regions == {"us-east-1"} for regions in plan.values())
    assert f"Plan: {len(expected)} account(s), 1 region(s), {len(expected)} target(s)" in result.stdout
    # roles are assumed in the selected accounts only, once each
    calls = assumed(emulator, mark)
    assert sorted(calls) == sorted(set(calls))
    assert names(org, set(calls)) == expected
    assert f"over {len(expected)} account(s)" in result.stderr


def test_run_prints_the_skipped_accounts_with_their_reason(cli: Cli, org: SandboxOrg,
                                                          emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    excluded = org.accounts["sandbox-2"]
    result = cli.run("run", "strip-default-sg", "--region", "eu-west-1", "--exclude", excluded, "--details", "all")
    assert result.returncode == 0, result.stderr
    assert f"skipped {org.suspended_account_id} (retired-1): not active (SUSPENDED)" in result.stderr
    assert (f"skipped {org.management_account_id} (master): management account (use --include-management)"
            in result.stderr)
    assert f"skipped {excluded} (sandbox-2): excluded (--exclude)" in result.stderr
    plan = planned(result)
    assert names(org, set(plan)) == ALL_MEMBERS - {"sandbox-2"}
    left_out = {org.management_account_id, org.suspended_account_id, excluded}
    assert not left_out & set(assumed(emulator, mark))


def test_run_with_only_the_suspended_account_does_nothing(cli: Cli, org: SandboxOrg,
                                                          emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    result = cli.run("run", "strip-default-sg", "--region", "us-east-1", "--account", org.suspended_account_id,
                     "--details", "all")
    assert result.returncode == 0, result.stderr
    assert f"skipped {org.suspended_account_id} (retired-1): not active (SUSPENDED)" in result.stderr
    assert "no accounts match the selectors; nothing to do" in result.stderr
    assert planned(result) == {}
    assert assumed(emulator, mark) == []


def test_run_account_not_in_the_organization(cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    mark = len(emulator.requests())
    result = cli.run("run", "strip-default-sg", "--region", "us-east-1", "--account", org.accounts["dev-app-1"],
                     "--account", "210987654321")
    assert result.returncode == 2
    assert "orgrunner: --account 210987654321: not an account of this organization" in result.stderr
    assert planned(result) == {}
    assert assumed(emulator, mark) == []
