"""ebs-default-encryption: encryption by default against the emulator through the CLI (moto serves
Get/EnableEbsEncryptionByDefault); the default KMS key with Stubbers, because moto does not
implement GetEbsDefaultKmsKeyId (it answers 500)."""

from __future__ import annotations

from pathlib import Path

import pytest
from orgrunner_builtin_tasks.ebs_default_encryption import EbsDefaultEncryption, EbsDefaultEncryptionConfig

from orgrunner.sandbox import SandboxOrg
from orgrunner.task import Drift
from tests.emulator.client import EmulatorClient, member_client
from tests.tasks_helpers import Stubbed, run_cli, task_config

TASK = "ebs-default-encryption"
REGION = "us-east-1"
AWS_KEY = f"arn:aws:kms:{REGION}:111122223333:alias/aws/ebs"
OUR_KEY = f"arn:aws:kms:{REGION}:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


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


# --- the default KMS key: Stubbers, since moto lacks GetEbsDefaultKmsKeyId ------------------------

def _key_task() -> Stubbed:
    return Stubbed(EbsDefaultEncryption(EbsDefaultEncryptionConfig(kms_key="alias/ebs-default")), region=REGION)


def _plan_reads(stubbed: Stubbed, default_key: str, encrypted: bool) -> None:
    stubbed.stub("kms").add_response("describe_key", {"KeyMetadata": {"KeyId": "1234abcd", "Arn": OUR_KEY}},
                                     {"KeyId": "alias/ebs-default"})
    ec2 = stubbed.stub("ec2")
    ec2.add_response("get_ebs_default_kms_key_id", {"KmsKeyId": default_key}, {})
    ec2.add_response("get_ebs_encryption_by_default", {"EbsEncryptionByDefault": encrypted}, {})


def test_configured_key_already_default_is_no_change() -> None:
    stubbed = _key_task()
    _plan_reads(stubbed, OUR_KEY, encrypted=True)
    assert stubbed.task.plan(stubbed.plan_context()) == []
    stubbed.assert_done()


def test_changing_the_default_key_is_destructive_and_planned_first() -> None:
    stubbed = _key_task()
    _plan_reads(stubbed, AWS_KEY, encrypted=False)
    key, enable = stubbed.task.plan(stubbed.plan_context())
    stubbed.assert_done()
    assert key.action == "set-default-kms-key" and key.destructive
    assert key.details == (f"KmsKeyId: {AWS_KEY} -> {OUR_KEY}",)
    assert key.undo == {"operation": "modify_ebs_default_kms_key_id", "KmsKeyId": AWS_KEY}
    assert enable.action == "enable-encryption-by-default" and not enable.destructive


def test_apply_sets_the_key_then_is_already_done_and_refuses_drift() -> None:
    stubbed = _key_task()
    _plan_reads(stubbed, AWS_KEY, encrypted=True)
    [change] = stubbed.task.plan(stubbed.plan_context())
    ec2 = stubbed.stub("ec2", "apply")
    ec2.add_response("get_ebs_default_kms_key_id", {"KmsKeyId": AWS_KEY}, {})
    ec2.add_response("modify_ebs_default_kms_key_id", {"KmsKeyId": OUR_KEY}, {"KmsKeyId": OUR_KEY})
    ec2.add_response("get_ebs_default_kms_key_id", {"KmsKeyId": OUR_KEY}, {})
    other = OUR_KEY.replace("1234abcd", "9999ffff")
    ec2.add_response("get_ebs_default_kms_key_id", {"KmsKeyId": other}, {})
    ctx = stubbed.apply_context()
    assert stubbed.task.apply(ctx, change) == "applied"
    assert stubbed.task.apply(ctx, change) == "already done"
    with pytest.raises(Drift):
        stubbed.task.apply(ctx, change)
    stubbed.assert_done()


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
