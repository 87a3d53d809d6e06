"""iam-password-policy: the account's IAM password policy, as `password-policy.yaml` describes it.

CIS AWS Foundations v3.0 1.8 / Security Hub IAM.15 (minimum length 14 or more) and 1.9 / IAM.16
(reuse prevention 24); the character classes (upper, lower, number, symbol) required by default
are those of CIS v1.2 1.5-1.8 and Security Hub IAM.7. Expiry (`max_password_age`) is unset by
default, as CIS v1.4 and later and NIST SP 800-63B advise; set 90 for CIS v1.2 1.11 / IAM.17.

Global: IAM is account-wide, so the task runs once per account. Plan: one change when the live
policy differs from the wanted one, with a `Field: before -> after` line per differing field
(`(unset)` for a field the account does not set, all fields when the account has no policy).
Apply: UpdateAccountPasswordPolicy with exactly the wanted policy (an unset field takes IAM's
default, e.g. no expiry), after checking that the live policy is still the planned `before`.

Destructive or not, decided per plan: a change that only tightens (a longer minimum, more
character classes, more remembered passwords, a shorter expiry) needs `--arm` alone and is undone
by restoring the old policy, kept in the change's `undo` (or deleting the policy if there was
none). A change that weakens any field is destructive: `--arm` and the typed confirmation.

Undo (`orgrunner undo RUN_ID`) puts the policy from before the run back, or deletes the policy if
the account had none, when the live policy is still the one the run set; a policy changed since
is left alone and reported.
"""

from __future__ import annotations

import math
import re
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from orgrunner.aws import call, error_code
from orgrunner.task import ApplyContext, Change, Drift, Task, TaskContext, register

FIELDS = ("MinimumPasswordLength", "RequireSymbols", "RequireNumbers", "RequireUppercaseCharacters",
          "RequireLowercaseCharacters", "AllowUsersToChangePassword", "MaxPasswordAge",
          "PasswordReusePrevention", "HardExpiry")
NUMBERS = ("MinimumPasswordLength", "MaxPasswordAge", "PasswordReusePrevention")
# What an account without a policy enforces (AWS's default policy: at least 8 characters).
NO_POLICY = {f: 8 if f == "MinimumPasswordLength" else None if f in NUMBERS else False for f in FIELDS}


class PasswordPolicyConfig(BaseModel):
    """config/password-policy.yaml; every key is optional (CIS values by default)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    minimum_password_length: int = Field(14, ge=6, le=128)
    require_symbols: bool = True
    require_numbers: bool = True
    require_uppercase_characters: bool = True
    require_lowercase_characters: bool = True
    allow_users_to_change_password: bool = True
    max_password_age: int | None = Field(None, ge=1, le=1095, description="days; unset: never expire")
    password_reuse_prevention: int | None = Field(24, ge=1, le=24)
    hard_expiry: bool = False

    def policy(self) -> dict[str, Any]:
        return {f: getattr(self, re.sub(r"(?<!^)([A-Z])", r"_\1", f).lower()) for f in FIELDS}


def _live(iam: Any) -> dict[str, Any] | None:
    """The account's policy, every field present (None when unset); None when there is none."""
    try:
        raw = call(iam, "get_account_password_policy")["PasswordPolicy"]
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise
    return {f: (raw.get(f) or None) if f in NUMBERS else bool(raw.get(f, False)) for f in FIELDS}


def _strength(field: str, value: Any) -> float:
    """Grows as the field's setting grows stronger."""
    return -float(value or math.inf) if field == "MaxPasswordAge" else float(value or 0)


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def _params(policy: dict[str, Any]) -> dict[str, Any]:
    return {f: v for f, v in policy.items() if v is not None}


@register
class IamPasswordPolicy(Task):
    name = "iam-password-policy"
    description = "Set the account password policy from password-policy.yaml (CIS 1.8, 1.9; IAM.7, IAM.15, IAM.16)."
    destructive = False  # the plan decides per change: weakening any field is destructive
    regional = False
    plan_actions = ("iam:GetAccountPasswordPolicy",)
    apply_actions = ("iam:UpdateAccountPasswordPolicy",)
    undo_actions = ("iam:UpdateAccountPasswordPolicy", "iam:DeleteAccountPasswordPolicy")
    config_file = "password-policy.yaml"
    Config = PasswordPolicyConfig

    def plan(self, ctx: TaskContext) -> list[Change]:
        assert isinstance(self.config, PasswordPolicyConfig)
        want, live = self.config.policy(), _live(ctx.client("iam"))
        if live == want:
            return []
        base = live or NO_POLICY
        fields = [f for f in FIELDS if live is None or live[f] != want[f]]
        weaker = [f for f in FIELDS if _strength(f, want[f]) < _strength(f, base[f])]
        summary = f"{'create' if live is None else 'update'} the password policy ({len(fields)} field(s))"
        return [ctx.change(
            resource="account-password-policy",
            action="update-account-password-policy",
            summary=summary + (f"; weakens {', '.join(weaker)}" if weaker else ""),
            details=[f"{f}: {_show(live[f]) if live else '(no policy)'} -> {_show(want[f])}" for f in fields],
            before=live,
            after=want,
            undo={"operation": "update_account_password_policy", "params": _params(live)} if live
            else {"operation": "delete_account_password_policy"},
            destructive=bool(weaker),
        )]

    def plan_undo(self, ctx: TaskContext, applied: list[Change]) -> list[Change]:
        live, changes = _live(ctx.client("iam")), []
        for done in applied:
            if not ctx.restorable(done, live, "the account password policy") or live is None:
                continue
            old = done.before
            changes.append(ctx.change(
                resource=done.resource, action="restore-password-policy" if old else "delete-password-policy",
                summary="restore the password policy from before the run" if old
                else "delete the password policy (the account had none before the run)",
                details=[f"{f}: {_show(live[f])} -> {_show(old[f]) if old else '(no policy)'}"
                         for f in FIELDS if old is None or live[f] != old[f]],
                before=live, after=old,
            ))
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        iam = ctx.client("iam")
        live = _live(iam)
        if live == change.after:
            return "already done"
        if live != change.before:
            raise Drift("the account password policy changed since the plan; not touched")
        if change.after is None:  # an undo: the account had no policy before the run
            call(iam, "delete_account_password_policy")
        else:
            call(iam, "update_account_password_policy", **_params(change.after))
        return "applied"
