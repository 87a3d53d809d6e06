"""Undo of the per-account desired-state tasks (iam-password-policy, ebs-default-encryption,
s3-account-public-access-block, securityhub-controls), end to end through the installed CLI against
the emulator with session policies enforced: an armed run, then `orgrunner undo RUN_ID`, whose dry
run writes nothing and whose armed run (with the typed confirmation) puts back what each account
held before the run. In every test one account (or control) is changed by someone else after the
run: the undo leaves it as they left it, and says so."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from botocore.exceptions import ClientError

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient, member_client
from tests.tasks_helpers import task_config

REGION = "us-east-1"


def check(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def where(accounts: list[str], regional: bool) -> list[str]:
    return [*[x for a in accounts for x in ("--account", a)], *(["--region", REGION] if regional else [])]


def armed_run(cli: Cli, task: str, accounts: list[str], *extra: str, regional: bool = False) -> str:
    """An armed run of `task` over `accounts`; its run id."""
    check(cli.run("run", task, "--arm", *where(accounts, regional), *extra))
    run_id: str = [e for e in cli.audit() if e["event"] == "run-start"][-1]["run_id"]
    return run_id


def writes_since(emulator: EmulatorClient, mark: int, operations: set[str]) -> list[tuple[str, str]]:
    return [(r["operation"], r["account"]) for r in emulator.requests()[mark:] if r["operation"] in operations]


def undo_dry_then_armed(cli: Cli, emulator: EmulatorClient, run_id: str, confirm: list[str], applied: int,
                        writes: set[str], *extra: str) -> tuple[str, list[tuple[str, str]]]:
    """The undo's dry run (checked to write nothing), then the armed undo confirmed for `confirm`,
    which applies `applied` changes; (the dry run's output, the writes the armed undo made)."""
    mark = len(emulator.requests())
    dry = check(cli.run("undo", run_id, "--details", "all", *extra))
    assert "Dry run: nothing was changed" in dry.stdout
    assert writes_since(emulator, mark, writes) == []
    mark = len(emulator.requests())
    done = check(cli.run("undo", run_id, "--arm", "--confirm-accounts", ",".join(confirm), *extra))
    assert done.stdout.count("applied: ") == applied, done.stdout
    refused = [r["operation"] for r in emulator.requests()[mark:] if r["status"] == 403]
    assert set(refused) <= {"DescribeOrganizationConfiguration"}  # (a member may not ask; the task expects it)
    return dry.stdout, writes_since(emulator, mark, writes)


def undo_session_actions(emulator: EmulatorClient, run_start: int) -> set[str]:
    """Every action the session policies of AssumeRole calls since `run_start` allowed."""
    policies = [json.loads(r["params"]["Policy"]) for r in emulator.requests()[run_start:]
                if r["operation"] == "AssumeRole" and r["params"].get("Policy")]
    return {a for p in policies for st in p["Statement"] for a in st["Action"]}


@pytest.fixture(autouse=True)
def _session_policies(emulator: EmulatorClient) -> None:
    emulator.enforce_session_policies(True)  # as AWS does: each phase may do only what the task declared


@pytest.fixture
def three(org: SandboxOrg) -> list[str]:
    """Restored, restored another way, changed by someone else after the run."""
    return [org.accounts["dev-app-1"], org.accounts["prod-app-1"], org.accounts["sandbox-1"]]


# --- iam-password-policy ------------------------------------------------------------------------

IAM_WRITES = {"UpdateAccountPasswordPolicy", "DeleteAccountPasswordPolicy"}


def _password_policy(emulator: EmulatorClient, account: str) -> dict[str, Any] | None:
    try:
        policy: dict[str, Any] = member_client(emulator.url, account, "iam").get_account_password_policy()[
            "PasswordPolicy"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchEntity"
        return None
    return policy


def test_password_policy_undo_restores_the_old_policy_or_deletes_a_new_one(
        cli: Cli, emulator: EmulatorClient, three: list[str]) -> None:
    weak, bare, changed = three
    member_client(emulator.url, weak, "iam").update_account_password_policy(
        MinimumPasswordLength=10, RequireSymbols=True, RequireNumbers=True, AllowUsersToChangePassword=True)
    old = _password_policy(emulator, weak)
    assert _password_policy(emulator, bare) is None and _password_policy(emulator, changed) is None

    run_id = armed_run(cli, "iam-password-policy", three)  # tightening only: --arm alone
    assert all((_password_policy(emulator, a) or {}).get("MinimumPasswordLength") == 14 for a in three)
    member_client(emulator.url, changed, "iam").update_account_password_policy(MinimumPasswordLength=20)

    dry, writes = undo_dry_then_armed(cli, emulator, run_id, [weak, bare], 2, IAM_WRITES)
    assert "restore the password policy from before the run" in dry
    assert "MinimumPasswordLength: 14 -> 10" in dry
    assert "delete the password policy (the account had none before the run)" in dry
    assert f"{changed} " in dry and "note: the account password policy has changed since the run; not restored" in dry
    assert sorted(writes) == sorted([("UpdateAccountPasswordPolicy", weak), ("DeleteAccountPasswordPolicy", bare)])
    assert _password_policy(emulator, weak) == old
    assert _password_policy(emulator, bare) is None
    assert (_password_policy(emulator, changed) or {}).get("MinimumPasswordLength") == 20  # theirs, untouched

    mark = len(emulator.requests())
    again = check(cli.run("undo", run_id, "--details", "all"))
    assert again.stdout.count("note: the account password policy is already as it was before the run") == 2
    assert "nothing to do, no target needs a change" in again.stdout and writes_since(emulator, mark, IAM_WRITES) == []


# --- ebs-default-encryption ---------------------------------------------------------------------

EBS_WRITES = {"EnableEbsEncryptionByDefault", "DisableEbsEncryptionByDefault", "ModifyEbsDefaultKmsKeyId",
              "ResetEbsDefaultKmsKeyId"}


def _ec2(emulator: EmulatorClient, account: str) -> Any:
    return member_client(emulator.url, account, "ec2", REGION)


def _new_key(emulator: EmulatorClient, account: str, alias: str | None = None) -> str:
    kms = member_client(emulator.url, account, "kms", REGION)
    arn: str = kms.create_key(Description="EBS")["KeyMetadata"]["Arn"]
    if alias:
        kms.create_alias(AliasName=alias, TargetKeyId=arn)
    return arn


def _ebs(emulator: EmulatorClient, account: str) -> tuple[str, bool]:
    ec2 = _ec2(emulator, account)
    return ec2.get_ebs_default_kms_key_id()["KmsKeyId"], ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"]


def test_ebs_undo_restores_the_old_key_and_turns_encryption_off_again(
        cli: Cli, emulator: EmulatorClient, three: list[str]) -> None:
    own_key, aws_key, changed = three
    ours = {a: _new_key(emulator, a, "alias/ebs-default") for a in three}
    previous = _new_key(emulator, own_key)
    _ec2(emulator, own_key).modify_ebs_default_kms_key_id(KmsKeyId=previous)
    before = {a: _ebs(emulator, a) for a in three}
    assert before[aws_key] == (f"arn:aws:kms:{REGION}:{aws_key}:alias/aws/ebs", False)

    config = task_config(cli.home, "ebs-default-encryption.yaml", "kms_key: alias/ebs-default\n")
    run_id = armed_run(cli, "ebs-default-encryption", three, "--confirm-accounts", ",".join(three),
                       "--config", str(config), regional=True)  # swapping the key is destructive
    assert all(_ebs(emulator, a) == (ours[a], True) for a in three)
    theirs = _new_key(emulator, changed)  # someone else picks another key and turns encryption off
    _ec2(emulator, changed).modify_ebs_default_kms_key_id(KmsKeyId=theirs)
    _ec2(emulator, changed).disable_ebs_encryption_by_default()

    mark = len(emulator.requests())
    dry, writes = undo_dry_then_armed(cli, emulator, run_id, [own_key, aws_key], 4, EBS_WRITES)
    allowed = undo_session_actions(emulator, mark)  # the undo's declared actions, not the run's writes
    assert {"ec2:DisableEbsEncryptionByDefault", "ec2:ResetEbsDefaultKmsKeyId"} <= allowed
    assert "ec2:EnableEbsEncryptionByDefault" not in allowed
    assert dry.count("restore the default EBS encryption key from before the run") == 2
    assert f"KmsKeyId: {ours[own_key]} -> {previous}" in dry
    assert dry.count("disable EBS encryption by default (off before the run)") == 2
    assert f"note: the default EBS key (now {theirs}) has changed since the run; not restored" in dry
    assert "note: EBS encryption by default is already as it was before the run; nothing to restore" in dry
    assert sorted(writes) == sorted([("ModifyEbsDefaultKmsKeyId", own_key), ("ResetEbsDefaultKmsKeyId", aws_key),
                                     ("DisableEbsEncryptionByDefault", own_key),
                                     ("DisableEbsEncryptionByDefault", aws_key)])
    assert _ebs(emulator, own_key) == before[own_key] and _ebs(emulator, aws_key) == before[aws_key]
    assert _ebs(emulator, changed) == (theirs, False)


# --- s3-account-public-access-block ---------------------------------------------------------------

S3_WRITES = {"PutPublicAccessBlock", "DeletePublicAccessBlock"}
ALL_ON = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
          "RestrictPublicBuckets": True}


def _s3control(emulator: EmulatorClient, account: str) -> Any:
    return member_client(emulator.url, account, "s3control", REGION)


def _block(emulator: EmulatorClient, account: str) -> dict[str, bool] | None:
    try:
        block: dict[str, bool] = _s3control(emulator, account).get_public_access_block(AccountId=account)[
            "PublicAccessBlockConfiguration"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchPublicAccessBlockConfiguration"
        return None
    return block


def test_s3_block_undo_restores_the_old_settings_or_deletes_a_new_configuration(
        cli: Cli, emulator: EmulatorClient, three: list[str]) -> None:
    partial, bare, changed = three
    old = {**dict.fromkeys(ALL_ON, False), "BlockPublicAcls": True}
    _s3control(emulator, partial).put_public_access_block(AccountId=partial, PublicAccessBlockConfiguration=old)
    assert _block(emulator, bare) is None and _block(emulator, changed) is None

    run_id = armed_run(cli, "s3-account-public-access-block", three)  # turning settings on: --arm alone
    assert all(_block(emulator, a) == ALL_ON for a in three)
    theirs = {**ALL_ON, "RestrictPublicBuckets": False}
    _s3control(emulator, changed).put_public_access_block(AccountId=changed, PublicAccessBlockConfiguration=theirs)

    dry, writes = undo_dry_then_armed(cli, emulator, run_id, [partial, bare], 2, S3_WRITES)
    assert "account Block Public Access: restore the settings from before the run" in dry
    assert "IgnorePublicAcls: True -> False" in dry
    assert "account Block Public Access: delete the configuration (none before the run)" in dry
    assert "note: the account's Block Public Access configuration has changed since the run; not restored" in dry
    assert sorted(writes) == sorted([("PutPublicAccessBlock", partial), ("DeletePublicAccessBlock", bare)])
    assert _block(emulator, partial) == old and _block(emulator, bare) is None
    assert _block(emulator, changed) == theirs


# --- securityhub-controls -----------------------------------------------------------------------

FSBP = "aws-foundational-security-best-practices/v/1.0.0"
FSBP_ARN = f"arn:aws:securityhub:{REGION}::standards/{FSBP}"
REASON = "Root hardware MFA is handled by the management account team"
HUB_WRITES = {"BatchUpdateStandardsControlAssociations"}


def _controls(emulator: EmulatorClient, account: str) -> dict[str, tuple[str, str | None]]:
    """EC2.7 and IAM.6 in FSBP: (status, reason)."""
    out = member_client(emulator.url, account, "securityhub", REGION).batch_get_standards_control_associations(
        StandardsControlAssociationIds=[{"StandardsArn": FSBP_ARN, "SecurityControlId": c} for c in ("EC2.7", "IAM.6")])
    return {a["SecurityControlId"]: (a["AssociationStatus"], a.get("UpdatedReason"))
            for a in out["StandardsControlAssociationDetails"]}


def test_securityhub_undo_restores_each_controls_status_and_reason(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    kept, changed = org.accounts["dev-app-1"], org.accounts["prod-app-2"]  # both seeded with EC2.7 off
    before = {a: _controls(emulator, a) for a in (kept, changed)}
    assert before[kept]["EC2.7"][0] == "DISABLED" and before[kept]["IAM.6"][0] == "ENABLED"

    config = task_config(cli.home, "securityhub-controls.yaml", f"standards:\n  {FSBP}:\n"
                         f"    EC2.7: {{status: ENABLED}}\n    IAM.6: {{status: DISABLED, reason: {REASON}}}\n")
    run_id = armed_run(cli, "securityhub-controls", [kept, changed], "--confirm-accounts", f"{kept},{changed}",
                       "--config", str(config), regional=True)  # disabling a control is destructive
    assert _controls(emulator, kept)["IAM.6"] == ("DISABLED", REASON)
    # someone else keeps IAM.6 off in one account, for a reason of their own
    member_client(emulator.url, changed, "securityhub", REGION).batch_update_standards_control_associations(
        StandardsControlAssociationUpdates=[{"StandardsArn": FSBP_ARN, "SecurityControlId": "IAM.6",
                                             "AssociationStatus": "DISABLED", "UpdatedReason": "theirs"}])

    dry, writes = undo_dry_then_armed(cli, emulator, run_id, [kept, changed], 3, HUB_WRITES)
    assert dry.count(f"{FSBP}/EC2.7: disable again, as before the run") == 2
    assert f"UpdatedReason: (none) -> {before[kept]['EC2.7'][1]}" in dry
    assert dry.count(f"{FSBP}/IAM.6: enable again, as before the run") == 1
    assert f"note: {FSBP}/IAM.6 (DISABLED now) has changed since the run; not restored" in dry
    assert sorted(writes) == sorted([("BatchUpdateStandardsControlAssociations", kept)] * 2
                                    + [("BatchUpdateStandardsControlAssociations", changed)])
    assert _controls(emulator, kept) == before[kept]
    assert _controls(emulator, changed) == {"EC2.7": before[changed]["EC2.7"], "IAM.6": ("DISABLED", "theirs")}



POLICY_ID = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"


def test_securityhub_undo_in_an_account_now_under_central_configuration_fails_and_writes_nothing(
        cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    """Put under a configuration policy since the run (seen from the delegated administrator's own
    account): the controls can only be changed through that policy, so the undo says so and writes
    nothing, as the run itself would."""
    account = org.accounts["dev-app-1"]
    config = task_config(cli.home, "securityhub-controls.yaml",
                         f"standards:\n  {FSBP}:\n    EC2.7: {{status: ENABLED}}\n")
    run_id = armed_run(cli, "securityhub-controls", [account], "--config", str(config), regional=True)
    assert _controls(emulator, account)["EC2.7"][0] == "ENABLED"
    emulator.securityhub_central(account, REGION, {account: POLICY_ID})

    mark = len(emulator.requests())
    refused = check(cli.run("undo", run_id, "--arm", "--confirm-accounts", account), 1)
    assert "1 control(s) to restore, but this account is under Security Hub central configuration" in refused.stdout
    assert writes_since(emulator, mark, HUB_WRITES) == []
    assert _controls(emulator, account)["EC2.7"][0] == "ENABLED"
