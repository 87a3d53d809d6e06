"""strip-default-sg: remove every rule from each VPC's default security group.

CIS AWS Foundations 5.4 / Security Hub EC2.2: the default security group of every VPC should
allow no traffic, so that a resource launched without a chosen group is isolated.

Plan: one change per default group that holds rules, listing each ingress and egress rule (rule
id, protocol, ports, peer). Apply: revoke exactly those rules by rule id, after checking again
that the group is still its VPC's `default` group. Rules removed since the plan count as done;
rules added since the plan are left for the next plan. Destructive: traffic that relied on the
rules stops, so it needs `--arm` and the typed confirmation; the audit log and journal keep
every removed rule in full so that it can be recreated.

Undo (`orgrunner undo RUN_ID`) authorizes the removed rules again, for each group that is still
as the run left it (no rules); a group that has changed since is left alone and reported.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from orgrunner.aws import call, error_code, paginate
from orgrunner.task import ApplyContext, Change, Drift, Task, TaskContext, register

from ._sg_rules import content, default_group, describe_rule, ordered, permission, risk_of, rules_of


@register
class StripDefaultSecurityGroups(Task):
    name = "strip-default-sg"
    description = "Remove every ingress and egress rule from each VPC's default security group (CIS 5.4, EC2.2)."
    destructive = True
    regional = True
    plan_actions = ("ec2:DescribeRegions", "ec2:DescribeVpcs", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSecurityGroupRules")
    apply_actions = ("ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress")
    undo_actions = ("ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress")

    def plan(self, ctx: TaskContext) -> list[Change]:
        ec2 = ctx.client("ec2")
        vpcs = {v["VpcId"] for v in paginate(ec2, "describe_vpcs", "Vpcs")}
        groups = paginate(ec2, "describe_security_groups", "SecurityGroups",
                          Filters=[{"Name": "group-name", "Values": ["default"]}])
        changes = []
        for group in sorted(groups, key=lambda g: g["GroupId"]):
            if group.get("GroupName") != "default" or group.get("VpcId") not in vpcs:
                continue
            rules = rules_of(ec2, group["GroupId"])
            if not rules:
                continue
            ingress = sum(not r.get("IsEgress") for r in rules)
            changes.append(ctx.change(
                resource=group["GroupId"],
                action="revoke-rules",
                summary=(f"{group['GroupId']} (default of {group['VpcId']}): remove {ingress} ingress and "
                         f"{len(rules) - ingress} egress rule(s)"),
                details=[describe_rule(r) for r in ordered(rules)],
                before={"group_id": group["GroupId"], "vpc_id": group["VpcId"], "rules": rules},
                after={"group_id": group["GroupId"], "vpc_id": group["VpcId"], "rules": []},
                undo={"group_id": group["GroupId"], "rules": rules},
                risk=risk_of(rules),
            ))
        return changes

    def plan_undo(self, ctx: TaskContext, applied: list[Change]) -> list[Change]:
        ec2 = ctx.client("ec2")
        changes = []
        for done in applied:
            group_id, vpc_id = done.before["group_id"], done.before["vpc_id"]
            try:
                group = default_group(ec2, group_id, vpc_id)
            except Drift as exc:
                ctx.note(str(exc))
                continue
            live = rules_of(ec2, group_id) if group else []
            if group is None or content(live) == content(done.undo["rules"]):
                state = "is gone" if group is None else "already holds its old rules"
                ctx.note(f"{group_id} {state}; nothing to restore")
            elif live:
                ctx.note(f"{group_id} has changed since the run ({len(live)} rule(s) now); not restored")
            else:
                rules = done.undo["rules"]
                changes.append(ctx.change(
                    resource=group_id, action="restore-rules",
                    summary=f"{group_id} (default of {vpc_id}): restore {len(rules)} rule(s) removed by the run",
                    details=[describe_rule(r) for r in ordered(rules)],
                    before={"group_id": group_id, "vpc_id": vpc_id, "rules": []},
                    after={"group_id": group_id, "vpc_id": vpc_id, "rules": rules},
                    risk=risk_of(rules),  # restoring them opens these again
                ))
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        ec2 = ctx.client("ec2")
        group_id, vpc_id = change.before["group_id"], change.before["vpc_id"]
        if change.action == "restore-rules":
            return self._restore(ec2, change)
        if default_group(ec2, group_id, vpc_id) is None:
            return "already done"  # the VPC and its default group are gone
        live = {r["SecurityGroupRuleId"]: r for r in rules_of(ec2, group_id)}
        planned = {r["SecurityGroupRuleId"]: r for r in change.before["rules"]}
        changed = sorted(i for i in planned if i in live and live[i] != planned[i])
        if changed:
            raise Drift(f"rule(s) {', '.join(changed)} of {group_id} changed since the plan; not touched")
        remaining = [planned[i] for i in sorted(planned) if i in live]
        if not remaining:
            return "already done"
        if len(remaining) < len(planned):  # someone removed some already: undo restores only ours
            ctx.narrow(replace(change, before={**change.before, "rules": remaining},
                               undo={**change.undo, "rules": remaining}))
        for egress, operation in ((False, "revoke_security_group_ingress"), (True, "revoke_security_group_egress")):
            ids = [r["SecurityGroupRuleId"] for r in remaining if bool(r.get("IsEgress")) == egress]
            if ids:
                self._revoke(ec2, operation, group_id, ids)
        return "applied"

    @staticmethod
    def _revoke(ec2: Any, operation: str, group_id: str, ids: list[str]) -> None:
        try:
            call(ec2, operation, GroupId=group_id, SecurityGroupRuleIds=ids)
        except ClientError as exc:
            # A retried revoke AWS already applied (its answer was lost), or a rule removed by hand
            # meanwhile: AWS refuses the whole call, so revoke what is still there, if anything.
            if not error_code(exc).endswith("NotFound"):
                raise
            still = {r["SecurityGroupRuleId"] for r in rules_of(ec2, group_id)}
            left = [i for i in ids if i in still]
            if left:
                call(ec2, operation, GroupId=group_id, SecurityGroupRuleIds=left)

    @staticmethod
    def _restore(ec2: Any, change: Change) -> str:
        group_id = change.before["group_id"]
        if default_group(ec2, group_id, change.before["vpc_id"]) is None:
            raise Drift(f"{group_id} no longer exists; not restored")
        live = rules_of(ec2, group_id)
        if content(live) == content(change.after["rules"]):
            return "already done"
        if live:
            raise Drift(f"{group_id} has changed since the undo was planned; not restored")
        for egress, operation in ((False, "authorize_security_group_ingress"),
                                  (True, "authorize_security_group_egress")):
            perms = [permission(r) for r in change.after["rules"] if bool(r.get("IsEgress")) == egress]
            if perms:
                call(ec2, operation, GroupId=group_id, IpPermissions=perms)
        return "applied"
