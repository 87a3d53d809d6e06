"""s3-account-public-access-block: the account-level S3 Block Public Access settings.

CIS AWS Foundations v3.0 2.1.4 / Security Hub S3.1: the account's Block Public Access settings
should block public ACLs, ignore public ACLs, block public bucket policies and restrict public
buckets. All four are true by default; `s3-account-public-access-block.yaml` may turn one off.

Global: the setting is account-wide, so the task runs once per account (S3 Control, with the
account id). Plan: one change when the live settings differ, with a `Field: before -> after` line
per differing setting; an account with no configuration counts as all four false. Apply:
PutPublicAccessBlock with exactly the wanted four settings, after checking that the live ones are
still the planned `before`.

Destructive or not, decided per plan: turning settings on only tightens (public access through
those paths is then refused) and is undone by restoring the old settings (in `undo`; deleting the
configuration if there was none), so it needs `--arm` alone. Turning any setting off relaxes
security: destructive, `--arm` and the typed confirmation.

Undo (`orgrunner undo RUN_ID`) puts the settings from before the run back, or deletes the
configuration if the account had none, when the live settings are still those the run set;
settings changed since are left alone and reported.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from orgrunner.aws import call, error_code
from orgrunner.task import ApplyContext, Change, Drift, Task, TaskContext, register

FIELDS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


class PublicAccessBlockConfig(BaseModel):
    """config/s3-account-public-access-block.yaml; optional, all four true by default."""

    model_config = ConfigDict(extra="forbid", strict=True)
    block_public_acls: bool = True
    ignore_public_acls: bool = True
    block_public_policy: bool = True
    restrict_public_buckets: bool = True

    def settings(self) -> dict[str, bool]:
        values = (self.block_public_acls, self.ignore_public_acls, self.block_public_policy,
                  self.restrict_public_buckets)
        return dict(zip(FIELDS, values, strict=True))


def _live(s3control: Any, account_id: str) -> dict[str, bool] | None:
    """The account's four settings; None when the account has no configuration at all."""
    try:
        raw = call(s3control, "get_public_access_block", AccountId=account_id)["PublicAccessBlockConfiguration"]
    except ClientError as exc:
        if error_code(exc) == "NoSuchPublicAccessBlockConfiguration":
            return None
        raise
    return {f: bool(raw.get(f, False)) for f in FIELDS}


@register
class S3AccountPublicAccessBlock(Task):
    name = "s3-account-public-access-block"
    description = "Turn on the account-level S3 Block Public Access settings (CIS 2.1.4, S3.1)."
    destructive = False  # the plan decides per change: turning a setting off is destructive
    regional = False
    plan_actions = ("s3:GetAccountPublicAccessBlock",)
    apply_actions = ("s3:PutAccountPublicAccessBlock",)
    undo_actions = ("s3:PutAccountPublicAccessBlock",)  # AWS authorizes DeletePublicAccessBlock by it
    config_file = "s3-account-public-access-block.yaml"
    Config = PublicAccessBlockConfig

    def plan(self, ctx: TaskContext) -> list[Change]:
        assert isinstance(self.config, PublicAccessBlockConfig)
        want, live = self.config.settings(), _live(ctx.client("s3control"), ctx.account_id)
        base = live or dict.fromkeys(FIELDS, False)
        fields = [f for f in FIELDS if base[f] != want[f]]
        if not fields:
            return []
        relaxed = [f for f in fields if base[f]]
        return [ctx.change(
            resource=f"account/{ctx.account_id}",
            action="put-public-access-block",
            summary=f"account Block Public Access: turn on {len(fields) - len(relaxed)}, turn off {len(relaxed)}",
            details=[f"{f}: {base[f]} -> {want[f]}" for f in fields],
            before=live,
            after=want,
            undo={"operation": "put_public_access_block", "PublicAccessBlockConfiguration": live} if live
            else {"operation": "delete_public_access_block"},
            destructive=bool(relaxed),
        )]

    def plan_undo(self, ctx: TaskContext, applied: list[Change]) -> list[Change]:
        live, changes = _live(ctx.client("s3control"), ctx.account_id), []
        for done in applied:
            if not ctx.restorable(done, live, "the account's Block Public Access configuration") or live is None:
                continue
            old = done.before
            changes.append(ctx.change(
                resource=done.resource, action="restore-public-access-block" if old else "delete-public-access-block",
                summary="account Block Public Access: restore the settings from before the run" if old
                else "account Block Public Access: delete the configuration (none before the run)",
                details=[f"{f}: {live[f]} -> {old[f] if old else '(no configuration)'}"
                         for f in FIELDS if old is None or live[f] != old[f]],
                before=live, after=old,
            ))
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        s3control = ctx.client("s3control")
        live = _live(s3control, ctx.account_id)
        if live == change.after:
            return "already done"
        if live != change.before:
            raise Drift("the account's Block Public Access settings changed since the plan; not touched")
        if change.after is None:  # an undo: the account had no configuration before the run
            call(s3control, "delete_public_access_block", AccountId=ctx.account_id)
        else:
            call(s3control, "put_public_access_block", AccountId=ctx.account_id,
                 PublicAccessBlockConfiguration=change.after)
        return "applied"
