"""securityhub-controls: the status of Security Hub controls per standard, from
`securityhub-controls.yaml`.

The file maps a standard (its id without ARN prefix, e.g.
`aws-foundational-security-best-practices/v/1.0.0` or `cis-aws-foundations-benchmark/v/3.0.0`)
to control ids in the consolidated form (`IAM.6`, `EC2.7`) and their wanted status: `ENABLED`, or
`DISABLED` with a `reason` (required). The shipped file keeps the controls behind this project's
other tasks enabled (EC2.2, EC2.7, IAM.15, IAM.16, S3.1).

Regional: Security Hub is per region. A region where Security Hub is not enabled, or where none of
the configured standards is, is reported as skipped, not failed; standards that are not enabled
are left alone (this task does not subscribe to standards). Plan: the consolidated control APIs
(GetEnabledStandards, BatchGetStandardsControlAssociations) and one change per control whose
status differs (`AssociationStatus: before -> after`). Apply:
BatchUpdateStandardsControlAssociations for that one control, after checking its status is still
the planned `before`; an unprocessed update fails the change with Security Hub's reason.

Central configuration: an account governed by a Security Hub configuration policy can only be
changed by the delegated administrator, through that policy. The plan detects it where Security
Hub lets it (the delegated administrator's own account: DescribeOrganizationConfiguration and
GetConfigurationPolicyAssociation) and fails the target with that explanation instead of planning
writes; in member accounts, which cannot see it, the update's refusal is reported the same way.

Destructive or not, decided per change: enabling a control only tightens (it adds checks) and is
undone by disabling it again (the old reason is kept in `undo`), so it needs `--arm` alone.
Disabling a control relaxes security monitoring: destructive, `--arm` and the typed confirmation.

Undo (`orgrunner undo RUN_ID`) gives each control the run changed its status (and reason) from
before the run again, when it still has the status (and reason) the run set; a control changed
since is left alone and reported. The task sets no control parameters, so undo restores none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from orgrunner.aws import call, error_code, paginate
from orgrunner.errors import TargetError
from orgrunner.task import ApplyContext, Change, Drift, Skip, Task, TaskContext, register

CENTRAL = ("this account is under Security Hub central configuration: only the delegated administrator "
           "can change its controls, through the configuration policy; nothing written")
StandardId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+/v/[0-9.]+$")]
ControlId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+\.[0-9]+$")]
VERB = {"ENABLED": "enable", "DISABLED": "disable"}
RESTORED = "restored by orgrunner undo"  # Security Hub requires a reason to disable


class ControlState(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    status: Literal["ENABLED", "DISABLED"]
    reason: str | None = Field(None, max_length=1024)

    @model_validator(mode="after")
    def _reason_when_disabled(self) -> ControlState:
        if self.status == "DISABLED" and not (self.reason or "").strip():
            raise ValueError("a reason is required to disable a control")
        if self.reason is not None and not self.reason.strip():
            raise ValueError("reason must not be blank")
        return self


class SecurityHubControlsConfig(BaseModel):
    """config/securityhub-controls.yaml: `standards: {STANDARD: {CONTROL: {status, reason}}}`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    standards: dict[StandardId, dict[ControlId, ControlState]] = Field(min_length=1)


def _standard_id(arn: str) -> str:
    """`arn:aws:securityhub:REGION::standards/NAME/v/X` (or `:::ruleset/...`) -> `NAME/v/X`."""
    return arn.split(":", 5)[5].split("/", 1)[1]


def _update(arn: str, control: str, status: str, reason: str | None) -> dict[str, str]:
    """One StandardsControlAssociationUpdate, as BatchUpdateStandardsControlAssociations takes it."""
    update = {"StandardsArn": arn, "SecurityControlId": control, "AssociationStatus": status}
    return update | ({"UpdatedReason": reason} if reason else {})


def _associations(hub: Any, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(standards ARN, control id) -> its association; an unprocessed pair fails the target."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for start in range(0, len(pairs), 100):
        ids = [{"StandardsArn": s, "SecurityControlId": c} for s, c in pairs[start:start + 100]]
        out = call(hub, "batch_get_standards_control_associations", StandardsControlAssociationIds=ids)
        for item in out.get("UnprocessedAssociations", []):
            key = item["StandardsControlAssociationId"]
            raise TargetError(f"cannot read {key['SecurityControlId']} in {_standard_id(key['StandardsArn'])}: "
                              f"{item['ErrorCode']}: {item.get('ErrorReason', '')}".rstrip(": "))
        found |= {(a["StandardsArn"], a["SecurityControlId"]): a for a in out["StandardsControlAssociationDetails"]}
    missing = [f"{c} in {_standard_id(s)}" for s, c in pairs if (s, c) not in found]
    if missing:
        raise TargetError(f"Security Hub did not return {', '.join(missing)}")
    return found


def _centrally_managed(hub: Any, account_id: str) -> bool:
    """True when Security Hub says this account's controls follow a configuration policy. Only the
    delegated administrator may ask; anyone else is refused, and then we cannot tell here."""
    try:
        org = call(hub, "describe_organization_configuration")
    except ClientError as exc:
        if error_code(exc) in ("AccessDeniedException", "InvalidAccessException"):
            return False
        raise
    if org.get("OrganizationConfiguration", {}).get("ConfigurationType") != "CENTRAL":
        return False
    policy = call(hub, "get_configuration_policy_association", Target={"AccountId": account_id})
    return policy.get("ConfigurationPolicyId") != "SELF_MANAGED_SECURITY_HUB"


def _hub(ctx: TaskContext) -> Any:
    """The Security Hub client; the target is skipped where Security Hub is not enabled."""
    hub = ctx.client("securityhub")
    try:
        call(hub, "describe_hub")
    except ClientError as exc:
        if error_code(exc) == "InvalidAccessException":  # "... is not subscribed to AWS Security Hub"
            raise Skip("Security Hub is not enabled in this region") from None
        raise
    return hub


@register
class SecurityHubControls(Task):
    name = "securityhub-controls"
    description = "Enable or disable Security Hub controls per standard, from securityhub-controls.yaml."
    destructive = False  # the plan decides per change: disabling a control is destructive
    regional = True
    plan_actions = ("securityhub:DescribeHub", "securityhub:GetEnabledStandards",
                    "securityhub:BatchGetStandardsControlAssociations",
                    "securityhub:DescribeOrganizationConfiguration", "securityhub:GetConfigurationPolicyAssociation")
    apply_actions = ("securityhub:BatchUpdateStandardsControlAssociations",)
    undo_actions = ("securityhub:BatchUpdateStandardsControlAssociations",)
    config_file = "securityhub-controls.yaml"
    Config = SecurityHubControlsConfig

    def plan(self, ctx: TaskContext) -> list[Change]:
        assert isinstance(self.config, SecurityHubControlsConfig)
        hub = _hub(ctx)
        enabled = {_standard_id(s["StandardsArn"]): s["StandardsArn"]
                   for s in paginate(hub, "get_enabled_standards", "StandardsSubscriptions")
                   if s["StandardsStatus"] != "DELETING"}
        wanted = [(enabled[std], std, control, state) for std, controls in self.config.standards.items()
                  if std in enabled for control, state in controls.items()]
        if not wanted:
            raise Skip("none of the configured standards is enabled in this region")
        live = _associations(hub, [(arn, control) for arn, _, control, _ in wanted])
        changes = []
        for arn, std, control, state in wanted:
            now = live[(arn, control)]
            if now["AssociationStatus"] == state.status:
                continue
            old = _update(arn, control, now["AssociationStatus"], now.get("UpdatedReason"))
            details = [f"AssociationStatus: {now['AssociationStatus']} -> {state.status}"]
            if state.reason is not None:
                details.append(f"UpdatedReason: {now.get('UpdatedReason', '(none)')} -> {state.reason}")
            changes.append(ctx.change(
                resource=f"{std}/{control}", action=f"{VERB[state.status]}-control",
                summary=f"{control} in {std}: {VERB[state.status]}", details=details,
                before=old, after=_update(arn, control, state.status, state.reason), undo=old,
                destructive=state.status == "DISABLED",
            ))
        if changes and _centrally_managed(hub, ctx.account_id):
            raise TargetError(f"{len(changes)} control(s) differ, but {CENTRAL}")
        return changes

    def plan_undo(self, ctx: TaskContext, applied: list[Change]) -> list[Change]:
        hub = _hub(ctx)
        keys = [(c.before["StandardsArn"], c.before["SecurityControlId"]) for c in applied]
        live, changes = _associations(hub, keys), []
        for done, key in zip(applied, keys, strict=True):
            now = _update(*key, live[key]["AssociationStatus"], live[key].get("UpdatedReason"))
            fields = [k for k in ("AssociationStatus", "UpdatedReason") if k in done.after]  # what the run set
            as_run = replace(done, before={k: done.before.get(k) for k in fields},
                             after={k: done.after[k] for k in fields})
            if not ctx.restorable(as_run, {k: now.get(k) for k in fields},
                                  f"{done.resource} ({now['AssociationStatus']} now)"):
                continue
            old = done.before | ({"UpdatedReason": RESTORED} if done.before["AssociationStatus"] == "DISABLED"
                                 and not done.before.get("UpdatedReason") else {})
            changes.append(ctx.change(
                resource=done.resource, action="restore-control",
                summary=f"{done.resource}: {VERB[old['AssociationStatus']]} again, as before the run",
                details=[f"{k}: {now.get(k, '(none)')} -> {old[k]}" for k in ("AssociationStatus", "UpdatedReason")
                         if k in old and now.get(k) != old[k]],
                before=now, after=old,
            ))
        if changes and _centrally_managed(hub, ctx.account_id):
            raise TargetError(f"{len(changes)} control(s) to restore, but {CENTRAL}")
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        hub = ctx.client("securityhub")
        key = (change.before["StandardsArn"], change.before["SecurityControlId"])
        status = _associations(hub, [key])[key]["AssociationStatus"]
        if status == change.after["AssociationStatus"]:
            return "already done"
        if status != change.before["AssociationStatus"]:
            raise Drift(f"{change.resource} is {status} now, not {change.before['AssociationStatus']}; not touched")
        try:
            out = call(hub, "batch_update_standards_control_associations",
                       StandardsControlAssociationUpdates=[change.after])
        except ClientError as exc:
            if error_code(exc) == "AccessDeniedException" and "central configuration" in str(exc):
                raise TargetError(CENTRAL) from None
            raise
        for item in out.get("UnprocessedAssociationUpdates", []):
            reason = f"{item['ErrorCode']}: {item.get('ErrorReason', '')}".rstrip(": ")
            if "central configuration" in reason:
                raise TargetError(f"{CENTRAL} ({reason})")
            raise TargetError(f"{change.resource} not updated: {reason}")
        return "applied"
