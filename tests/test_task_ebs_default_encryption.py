"""ebs-default-encryption against the emulator through the CLI: moto serves
Get/EnableEbsEncryptionByDefault, the emulator layer the default KMS key (moto answers
GetEbsDefaultKmsKeyId with a 500); drift, which needs a change between plan and apply, runs
plan/apply directly on the engine's guarded clients against the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from orgrunner_builtin_tasks.ebs_default_encryption import EbsDefaultEncryption, EbsDefaultEncryptionConfig

from orgrunner.sandbox.org import SandboxOrg
from orgrunner.task import Drift
from tests.emulator.client import EmulatorClient, member_client
from tests.tasks_helpers import emulator_contexts, run_cli, task_config

TASK = "ebs-default-encryption"
REGION = "us-east-1"


def _encrypted(emulator: EmulatorClient, account: str, region: str) -> bool:
    ec2 = member_client(emulator.url, account, "ec2", region)
    return bool(ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"])


def test_enabled_everywhere_is_no_change(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    for region in org.regions:
        member_client(emulator.url, account, "ec2", region).enable_ebs_encryption_by_default()
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", regions=org.regions)
    assert run.code == 0, run.err
    assert run.statuses("plan") == ["ok", "ok"] and run.changes == []


def test_each_region_is_planned_and_enabled_with_arm_alone_then_replans_clean(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    member_client(emulator.url, account, "ec2", "eu-west-1").enable_ebs_encryption_by_default()
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", regions=org.regions)
    assert run.code == 0, run.err
    [change] = run.changes
    assert change["region"] == "us-east-1" and change["destructive"] is False
    assert change["details"] == ["EbsEncryptionByDefault: False -> True"]
    assert change["undo"] == {"operation": "disable_ebs_encryption_by_default"}
    assert not _encrypted(emulator, account, "us-east-1")

    armed = run_cli(emulator, tmp_path, TASK, account, "--arm", regions=org.regions)  # no typed confirmation
    assert armed.code == 0, armed.err
    assert all(_encrypted(emulator, account, region) for region in org.regions)
    again = run_cli(emulator, tmp_path, TASK, account, "--dry-run", regions=org.regions)
    assert again.code == 0 and again.changes == []


# --- the default KMS key: the emulator layer keeps it per account and region ------------------------

def _our_key(emulator: EmulatorClient, account: str) -> str:
    """A customer managed key named alias/ebs-default in the member's us-east-1; its ARN."""
    kms = member_client(emulator.url, account, "kms", REGION)
    arn: str = kms.create_key(Description="EBS default")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/ebs-default", TargetKeyId=arn)
    return arn


def _default_key(emulator: EmulatorClient, account: str) -> str:
    return str(member_client(emulator.url, account, "ec2", REGION).get_ebs_default_kms_key_id()["KmsKeyId"])


def _key_config(tmp_path: Path) -> Path:
    return task_config(tmp_path, "ebs-default-encryption.yaml", "kms_key: alias/ebs-default\n")


def test_configured_key_already_default_is_no_change(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    ec2 = member_client(emulator.url, account, "ec2", REGION)
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=_our_key(emulator, account))
    ec2.enable_ebs_encryption_by_default()
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=_key_config(tmp_path))
    assert run.code == 0, run.out + run.err
    assert run.statuses("plan") == ["ok"] and run.changes == []


def test_changing_the_default_key_is_destructive_and_planned_first(
        emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    ours, aws_key = _our_key(emulator, account), f"arn:aws:kms:{REGION}:{account}:alias/aws/ebs"
    run = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=_key_config(tmp_path))
    assert run.code == 0, run.out + run.err
    key, enable = run.changes
    assert key["action"] == "set-default-kms-key" and key["destructive"] is True
    assert key["details"] == [f"KmsKeyId: {aws_key} -> {ours}"]
    assert key["undo"] == {"operation": "modify_ebs_default_kms_key_id", "KmsKeyId": aws_key}
    assert enable["action"] == "enable-encryption-by-default" and enable["destructive"] is False
    assert _default_key(emulator, account) == aws_key and not _encrypted(emulator, account, REGION)


def test_apply_sets_the_key_then_replans_clean(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    ours, config = _our_key(emulator, account), _key_config(tmp_path)
    emulator.enforce_session_policies(True)
    run = run_cli(emulator, tmp_path, TASK, account, "--arm", "--confirm-accounts", account, config=config)
    assert run.code == 0, run.out + run.err
    assert run.statuses("apply") == ["ok"], run.report
    assert _default_key(emulator, account) == ours and _encrypted(emulator, account, REGION)
    again = run_cli(emulator, tmp_path, TASK, account, "--dry-run", config=config)
    assert again.code == 0 and again.changes == []


def test_apply_is_already_done_then_refuses_drift(emulator: EmulatorClient, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    ours = _our_key(emulator, account)
    member_client(emulator.url, account, "ec2", REGION).enable_ebs_encryption_by_default()
    task = EbsDefaultEncryption(EbsDefaultEncryptionConfig(kms_key="alias/ebs-default"))
    plan_ctx, apply_ctx = emulator_contexts(emulator, task, account, REGION)
    [change] = task.plan(plan_ctx)
    assert task.apply(apply_ctx, change) == "applied"
    assert task.apply(apply_ctx, change) == "already done"
    kms = member_client(emulator.url, account, "kms", REGION)
    other = kms.create_key(Description="someone else's")["KeyMetadata"]["Arn"]
    member_client(emulator.url, account, "ec2", REGION).modify_ebs_default_kms_key_id(KmsKeyId=other)
    with pytest.raises(Drift):
        task.apply(apply_ctx, change)
    assert _default_key(emulator, account) == other != ours


@pytest.mark.parametrize(("text", "line", "message"), [
    ("kms_key: alias/aws/ebs\n", 1, "kms_key: Value error, name a customer managed key"),
    ("# the key\nkms_key: alias/ebs\nregion: eu-west-1\n", 3, "region: Extra inputs are not permitted"),
    ("kms_key: 42\n", 1, "kms_key: Input should be a valid string"),
])
def test_config_errors_name_the_file_and_line(emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path,
                                              text: str, line: int, message: str) -> None:
    config = task_config(tmp_path, "ebs-default-encryption.yaml", text)
    run = run_cli(emulator, tmp_path, TASK, org.accounts["dev-app-1"], "--dry-run", config=config)
    assert run.code == 2
    [error] = run.err.strip().splitlines()
    assert f"ebs-default-encryption.yaml:{line}: {message}" in error
