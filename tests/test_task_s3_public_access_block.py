"""s3-account-public-access-block against the emulator (moto serves S3 Control's
Get/Put/DeletePublicAccessBlock): end to end through the CLI, and plan/apply directly for drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from orgrunner_builtin_tasks.s3_account_public_access_block import PublicAccessBlockConfig, S3AccountPublicAccessBlock

from orgrunner.sandbox.org import SandboxOrg
from orgrunner.task import Drift
from tests.emulator.client import EmulatorClient, member_client
from tests.tasks_helpers import emulator_contexts, run_cli, task_config

TASK = "s3-account-public-access-block"
ALL_ON = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}


def _put(emulator: EmulatorClient, account: str, **settings: bool) -> None:
    member_client(emulator.url, account, "s3control").put_public_access_block(
        AccountId=account, PublicAccessBlockConfiguration=settings)


def _live(emulator: EmulatorClient, account: str) -> dict[str, Any]:
    s3control = member_client(emulator.url, account, "s3control")
    config: dict[str, Any] = s3control.get_public_access_block(AccountId=account)["PublicAccessBlockConfiguration"]
    return config


def test_matching_account_has_no_change(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    _put(emulator, account, **ALL_ON)
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run")
    assert run.code == 0, run.err
    assert run.statuses("plan") == ["ok"] and run.changes == []


def test_partial_settings_are_planned_field_by_field(emulator: EmulatorClient, org: SandboxOrg,
                                                     tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    _put(emulator, account, BlockPublicAcls=True, IgnorePublicAcls=True)
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run")
    assert run.code == 0, run.err
    [change] = run.changes
    assert change["details"] == ["BlockPublicPolicy: False -> True", "RestrictPublicBuckets: False -> True"]
    assert change["destructive"] is False
    assert change["undo"]["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is False
    assert _live(emulator, account)["BlockPublicPolicy"] is False


def test_account_without_configuration_is_fixed_with_arm_alone_then_replans_clean(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["prod-app-1"]
    run = run_cli(emulator, tmp_path, TASK, account, "--arm")  # tightening only: no typed confirmation
    assert run.code == 0, run.err
    [change] = run.changes
    assert change["before"] is None and change["undo"] == {"operation": "delete_public_access_block"}
    assert len(change["details"]) == 4
    assert _live(emulator, account) == ALL_ON
    again = run_cli(emulator, tmp_path, TASK, account, "--dry-run")
    assert again.code == 0 and again.changes == []


def test_turning_a_setting_off_is_destructive(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    _put(emulator, account, **ALL_ON)
    config = task_config(tmp_path, "s3-account-public-access-block.yaml", "block_public_policy: false\n")
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=config)
    [change] = run.changes
    assert change["destructive"] is True
    assert change["details"] == ["BlockPublicPolicy: True -> False"]
    refused = run_cli(emulator, tmp_path, TASK, account, "--arm", config=config)
    assert refused.code == 3
    assert _live(emulator, account) == ALL_ON
    applied = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account, config=config)
    assert applied.code == 0, applied.err
    assert _live(emulator, account) == {**ALL_ON, "BlockPublicPolicy": False}


def test_apply_refuses_settings_changed_since_the_plan(emulator: EmulatorClient, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    task = S3AccountPublicAccessBlock(PublicAccessBlockConfig())
    plan_ctx, apply_ctx = emulator_contexts(emulator, task, account)
    [change] = task.plan(plan_ctx)
    _put(emulator, account, BlockPublicAcls=True)
    with pytest.raises(Drift):
        task.apply(apply_ctx, change)
    _put(emulator, account, **ALL_ON)
    assert task.apply(apply_ctx, change) == "already done"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("block_public_acls: true\nblock_public_buckets: true\n", 2,
     "block_public_buckets: Extra inputs are not permitted"),
    ("ignore_public_acls: 1\n", 1, "ignore_public_acls: Input should be a valid boolean"),
])
def test_config_errors_name_the_file_and_line(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path,
                                              text: str, line: int, message: str) -> None:
    config = task_config(tmp_path, "s3-account-public-access-block.yaml", text)
    run = run_cli(emulator, tmp_path, TASK, org.accounts["dev-app-1"], "--dry-run", config=config)
    assert run.code == 2
    [error] = run.err.strip().splitlines()
    assert f"s3-account-public-access-block.yaml:{line}: {message}" in error
