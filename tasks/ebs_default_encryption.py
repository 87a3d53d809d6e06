"""ebs-default-encryption: EBS encryption by default, in every targeted region.

CIS AWS Foundations v3.0 2.2.1 / Security Hub EC2.7: new EBS volumes and snapshot copies should be
encrypted without anyone having to ask. The setting is per account and region, so the task is
regional. Optionally `ebs-default-encryption.yaml` names the KMS key to use by default
(`kms_key`: an alias such as `alias/ebs-default`, present in every targeted account and region, or
a key id or ARN); without it the default key is left as it is (AWS's `aws/ebs` unless changed).

Plan: up to two changes. `set-default-kms-key` when the default key's ARN differs from the
configured key's (resolved with KMS DescribeKey), then `enable-encryption-by-default` when
encryption by default is off. Apply: ModifyEbsDefaultKmsKeyId / EnableEbsEncryptionByDefault,
after checking that the live value is still the planned `before`.

Destructive or not: enabling encryption by default only tightens (existing volumes are untouched)
and is undone by DisableEbsEncryptionByDefault, so it needs `--arm` alone. Changing the default key
is not a tightening but a swap: every principal and service-linked role that launches instances
then needs grants on the new key, or launches fail; so it is destructive, and needs `--arm` and the
typed confirmation. Its `undo` restores the old key.

Undo (`orgrunner undo RUN_ID`) turns encryption by default off again where the run turned it on
and it is still on, and puts the old default key back (ResetEbsDefaultKmsKeyId for AWS's managed
`aws/ebs`) where the default key is still the one the run set; a key changed since is left alone
and reported.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orgrunner.aws import call
from orgrunner.task import ApplyContext, Change, Drift, Task, TaskContext, register

SET_KEY, ENABLE = "set-default-kms-key", "enable-encryption-by-default"
RESTORE_KEY, DISABLE = "restore-default-kms-key", "disable-encryption-by-default"


class EbsDefaultEncryptionConfig(BaseModel):
    """config/ebs-default-encryption.yaml; optional."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kms_key: str | None = Field(None, min_length=1, description="alias/NAME, key id or key ARN; unset: leave it")

    @field_validator("kms_key")
    @classmethod
    def _customer_key(cls, key: str | None) -> str | None:
        if key is not None and (key.startswith("alias/aws/") or ":alias/aws/" in key):
            raise ValueError("name a customer managed key; leave kms_key unset to keep the AWS managed key")
        return key


def _encrypted(ec2: Any) -> bool:
    return bool(call(ec2, "get_ebs_encryption_by_default")["EbsEncryptionByDefault"])


def _default_key(ec2: Any) -> str:
    return str(call(ec2, "get_ebs_default_kms_key_id")["KmsKeyId"])


def _set_default_key(ec2: Any, key: str) -> None:
    if key.endswith(":alias/aws/ebs"):  # AWS's managed key: only a reset makes it the default again
        call(ec2, "reset_ebs_default_kms_key_id")
    else:
        call(ec2, "modify_ebs_default_kms_key_id", KmsKeyId=key)


@register
class EbsDefaultEncryption(Task):
    name = "ebs-default-encryption"
    description = "Enable EBS encryption by default in every region, optionally with a KMS key (CIS 2.2.1, EC2.7)."
    destructive = False  # enabling only tightens; changing the default key is destructive (see the doc)
    regional = True
    plan_actions = ("ec2:GetEbsEncryptionByDefault", "ec2:GetEbsDefaultKmsKeyId", "kms:DescribeKey")
    apply_actions = ("ec2:EnableEbsEncryptionByDefault", "ec2:ModifyEbsDefaultKmsKeyId")
    undo_actions = ("ec2:DisableEbsEncryptionByDefault", "ec2:ModifyEbsDefaultKmsKeyId",
                    "ec2:ResetEbsDefaultKmsKeyId")
    config_file = "ebs-default-encryption.yaml"
    Config = EbsDefaultEncryptionConfig

    def plan(self, ctx: TaskContext) -> list[Change]:
        assert isinstance(self.config, EbsDefaultEncryptionConfig)
        ec2, changes = ctx.client("ec2"), []
        if self.config.kms_key is not None:
            key = call(ctx.client("kms"), "describe_key", KeyId=self.config.kms_key)["KeyMetadata"]["Arn"]
            current = _default_key(ec2)
            if current != key:
                changes.append(ctx.change(
                    resource="ebs-default-kms-key", action=SET_KEY,
                    summary=f"set the default EBS encryption key to {self.config.kms_key}",
                    details=[f"KmsKeyId: {current} -> {key}"],
                    before={"KmsKeyId": current}, after={"KmsKeyId": key},
                    undo={"operation": "modify_ebs_default_kms_key_id", "KmsKeyId": current},
                    destructive=True,
                ))
        if not _encrypted(ec2):
            changes.append(ctx.change(
                resource="ebs-encryption-by-default", action=ENABLE,
                summary="enable EBS encryption by default",
                details=["EbsEncryptionByDefault: False -> True"],
                before={"EbsEncryptionByDefault": False}, after={"EbsEncryptionByDefault": True},
                undo={"operation": "disable_ebs_encryption_by_default"},
                destructive=False,
            ))
        return changes

    def plan_undo(self, ctx: TaskContext, applied: list[Change]) -> list[Change]:
        ec2, changes = ctx.client("ec2"), []
        for done in applied:
            if done.action == ENABLE:
                live: dict[str, Any] = {"EbsEncryptionByDefault": _encrypted(ec2)}
                what, action, summary = ("EBS encryption by default", DISABLE,
                                         "disable EBS encryption by default (off before the run)")
            else:
                live = {"KmsKeyId": _default_key(ec2)}
                what, action, summary = (f"the default EBS key (now {live['KmsKeyId']})", RESTORE_KEY,
                                         "restore the default EBS encryption key from before the run")
            if ctx.restorable(done, live, what):
                changes.append(ctx.change(
                    resource=done.resource, action=action, summary=summary,
                    details=[f"{f}: {live[f]} -> {old}" for f, old in done.before.items()],
                    before=live, after=done.before,
                ))
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        ec2 = ctx.client("ec2")
        if change.action in (ENABLE, DISABLE):
            if _encrypted(ec2) == change.after["EbsEncryptionByDefault"]:
                return "already done"
            call(ec2, "enable_ebs_encryption_by_default" if change.action == ENABLE
                 else "disable_ebs_encryption_by_default")
            return "applied"
        live = _default_key(ec2)
        if live == change.after["KmsKeyId"]:
            return "already done"
        if live != change.before["KmsKeyId"]:
            raise Drift(f"the default EBS key changed since the plan (now {live}); not touched")
        _set_default_key(ec2, change.after["KmsKeyId"])
        return "applied"
