"""iam-password-policy against the emulator (moto serves Get/Update/DeleteAccountPasswordPolicy):
end to end through the CLI, and plan/apply directly for drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from orgrunner_builtin_tasks.iam_password_policy import IamPasswordPolicy, PasswordPolicyConfig

from orgrunner.sandbox.org import SandboxOrg
from orgrunner.task import Drift
from tests.emulator.client import EmulatorClient, member_client
from tests.tasks_helpers import emulator_contexts, run_cli, task_config

TASK = "iam-password-policy"
CIS = {"MinimumPasswordLength": 14, "RequireSymbols": True, "RequireNumbers": True,
       "RequireUppercaseCharacters": True, "RequireLowercaseCharacters": True,
       "AllowUsersToChangePassword": True, "PasswordReusePrevention": 24}


def _iam(emulator: EmulatorClient, account: str) -> Any:
    return member_client(emulator.url, account, "iam")


def _policy(emulator: EmulatorClient, account: str) -> dict[str, Any]:
    policy: dict[str, Any] = _iam(emulator, account).get_account_password_policy()["PasswordPolicy"]
    return policy


def test_matching_account_has_no_change(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    _iam(emulator, account).update_account_password_policy(**CIS)
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run")
    assert run.code == 0, run.err
    assert run.statuses("plan") == ["ok"] and run.changes == []
    assert "nothing to do, no target needs a change" in run.out


def test_differing_policy_is_planned_field_by_field_and_dry_run_writes_nothing(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    _iam(emulator, account).update_account_password_policy(MinimumPasswordLength=10, RequireSymbols=True,
                                                           RequireNumbers=True, AllowUsersToChangePassword=True)
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run")
    assert run.code == 0, run.err
    [change] = run.changes
    assert change["details"] == [
        "MinimumPasswordLength: 10 -> 14",
        "RequireUppercaseCharacters: False -> True",
        "RequireLowercaseCharacters: False -> True",
        "PasswordReusePrevention: (unset) -> 24",
    ]
    assert change["destructive"] is False
    assert change["undo"]["params"]["MinimumPasswordLength"] == 10
    assert "MinimumPasswordLength: 10 -> 14" in run.out
    assert _policy(emulator, account)["MinimumPasswordLength"] == 10


def test_account_without_policy_gets_one_with_arm_alone_then_replans_clean(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["prod-app-1"]
    run = run_cli(emulator, tmp_path, TASK, account, "--arm")  # tightening only: no typed confirmation
    assert run.code == 0, run.err
    [change] = run.changes
    assert change["before"] is None and change["undo"] == {"operation": "delete_account_password_policy"}
    assert "MinimumPasswordLength: (no policy) -> 14" in change["details"]
    assert "applied" in run.out
    live = _policy(emulator, account)
    assert {k: live[k] for k in CIS} == CIS and not live.get("MaxPasswordAge")
    again = run_cli(emulator, tmp_path, TASK, account, "--dry-run")
    assert again.code == 0 and again.changes == []


def test_weaker_policy_is_destructive_and_needs_the_typed_confirmation(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    _iam(emulator, account).update_account_password_policy(**{**CIS, "MinimumPasswordLength": 20})
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run")
    [change] = run.changes
    assert change["destructive"] is True
    assert change["details"] == ["MinimumPasswordLength: 20 -> 14"]
    assert "weakens MinimumPasswordLength" in change["summary"]

    refused = run_cli(emulator, tmp_path, TASK, account, "--arm")  # no terminal, no --confirm-accounts
    assert refused.code == 3, refused.err
    assert _policy(emulator, account)["MinimumPasswordLength"] == 20

    confirmed = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account)
    assert confirmed.code == 0, confirmed.err
    assert _policy(emulator, account)["MinimumPasswordLength"] == 14


def test_configured_expiry_and_no_reuse_rule(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    _iam(emulator, account).update_account_password_policy(**CIS)
    config = task_config(tmp_path, "password-policy.yaml", "max_password_age: 90\npassword_reuse_prevention: null\n")
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=config)
    [change] = run.changes
    assert change["details"] == ["MaxPasswordAge: (unset) -> 90", "PasswordReusePrevention: 24 -> (unset)"]
    assert change["destructive"] is True  # forgetting reused passwords weakens the policy
    applied = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account, config=config)
    assert applied.code == 0, applied.err
    live = _policy(emulator, account)
    assert live["MaxPasswordAge"] == 90 and not live.get("PasswordReusePrevention")


def test_apply_refuses_a_policy_changed_since_the_plan(emulator: EmulatorClient, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    task = IamPasswordPolicy(PasswordPolicyConfig())
    plan_ctx, apply_ctx = emulator_contexts(emulator, task, account)
    [change] = task.plan(plan_ctx)
    _iam(emulator, account).update_account_password_policy(MinimumPasswordLength=9)
    with pytest.raises(Drift):
        task.apply(apply_ctx, change)
    assert _policy(emulator, account)["MinimumPasswordLength"] == 9
    _iam(emulator, account).update_account_password_policy(**CIS)
    assert task.apply(apply_ctx, change) == "already done"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("minimum_password_length: 14\nminimum_length: 16\n", 2, "minimum_length: Extra inputs are not permitted"),
    ("require_symbols: true\nminimum_password_length: long\n", 2, "minimum_password_length: Input should be"),
    ("password_reuse_prevention: 25\n", 1, "password_reuse_prevention: Input should be less than or equal to 24"),
    ("require_numbers: 'yes'\n", 1, "require_numbers: Input should be a valid boolean"),
])
def test_config_errors_name_the_file_and_line(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path,
                                              text: str, line: int, message: str) -> None:
    config = task_config(tmp_path, "password-policy.yaml", text)
    run = run_cli(emulator, tmp_path, TASK, org.accounts["dev-app-1"], "--dry-run", config=config)
    assert run.code == 2
    [error] = run.err.strip().splitlines()
    assert f"password-policy.yaml:{line}: {message}" in error
    assert run.report == []
