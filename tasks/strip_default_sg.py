"""strip-default-sg: remove every rule from each VPC's default security group.

CIS AWS Foundations 5.4 / Security Hub EC2.2: the default security group of every VPC should
allow no traffic, so that a resource launched without a chosen group is isolated.

Plan: one change per default group that holds rules, listing each ingress and egress rule (rule
id, protocol, ports, peer). Apply: revoke exactly those rules by rule id, after checking again
that the group is still its VPC's `default` group. Rules removed since the plan count as done;
rules added since the plan are left for the next plan. Destructive: traffic that relied on the
rules stops, so it needs `--arm` and the typed confirmation; the audit log and journal keep
every removed rule in full so that it can be recreated.
"""

from __future__ import annotations

from typing import Any

from orgrunner.aws import call, paginate
from orgrunner.task import ApplyContext, Change, Drift, Task, TaskContext, register


def _rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule as data, with everything needed to recreate it."""
    keys = ("SecurityGroupRuleId", "IsEgress", "IpProtocol", "FromPort", "ToPort", "CidrIpv4", "CidrIpv6",
            "PrefixListId", "Description")
    data = {k: rule[k] for k in keys if k in rule}
    if "ReferencedGroupInfo" in rule:
        data["ReferencedGroupId"] = rule["ReferencedGroupInfo"].get("GroupId")
    return data


def _peer(rule: dict[str, Any]) -> str:
    return str(rule.get("CidrIpv4") or rule.get("CidrIpv6") or rule.get("PrefixListId")
               or rule.get("ReferencedGroupId") or "?")


def _ports(rule: dict[str, Any]) -> str:
    if rule.get("IpProtocol") == "-1":
        return "all traffic"
    low, high = rule.get("FromPort"), rule.get("ToPort")
    return f"{rule.get('IpProtocol')} {low}" if low == high else f"{rule.get('IpProtocol')} {low}-{high}"


def describe_rule(rule: dict[str, Any]) -> str:
    direction = "egress to" if rule.get("IsEgress") else "ingress from"
    return f"{rule.get('SecurityGroupRuleId')}: {_ports(rule)} {direction} {_peer(rule)}"


def _default_group(ec2: Any, group_id: str, vpc_id: str) -> dict[str, Any] | None:
    groups = paginate(ec2, "describe_security_groups", "SecurityGroups",
                      Filters=[{"Name": "group-id", "Values": [group_id]}])
    group: dict[str, Any] | None = groups[0] if groups else None
    if group is None:
        return None
    if group.get("GroupName") != "default" or group.get("VpcId") != vpc_id:
        raise Drift(f"{group_id} is no longer the default group of {vpc_id}; not touched")
    return group


def _rules(ec2: Any, group_id: str) -> list[dict[str, Any]]:
    rules = paginate(ec2, "describe_security_group_rules", "SecurityGroupRules",
                     Filters=[{"Name": "group-id", "Values": [group_id]}])
    return sorted((_rule(r) for r in rules), key=lambda r: r["SecurityGroupRuleId"])


@register
class StripDefaultSecurityGroups(Task):
    name = "strip-default-sg"
    description = "Remove every ingress and egress rule from each VPC's default security group (CIS 5.4, EC2.2)."
    destructive = True
    regional = True
    plan_actions = ("ec2:DescribeRegions", "ec2:DescribeVpcs", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSecurityGroupRules")
    apply_actions = ("ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress")

    def plan(self, ctx: TaskContext) -> list[Change]:
        ec2 = ctx.client("ec2")
        vpcs = {v["VpcId"] for v in paginate(ec2, "describe_vpcs", "Vpcs")}
        groups = paginate(ec2, "describe_security_groups", "SecurityGroups",
                          Filters=[{"Name": "group-name", "Values": ["default"]}])
        changes = []
        for group in sorted(groups, key=lambda g: g["GroupId"]):
            if group.get("GroupName") != "default" or group.get("VpcId") not in vpcs:
                continue
            rules = _rules(ec2, group["GroupId"])
            if not rules:
                continue
            ingress = sum(not r.get("IsEgress") for r in rules)
            changes.append(ctx.change(
                resource=group["GroupId"],
                action="revoke-rules",
                summary=(f"{group['GroupId']} (default of {group['VpcId']}): remove {ingress} ingress and "
                         f"{len(rules) - ingress} egress rule(s)"),
                details=[describe_rule(r) for r in rules],
                before={"group_id": group["GroupId"], "vpc_id": group["VpcId"], "rules": rules},
                after={"group_id": group["GroupId"], "vpc_id": group["VpcId"], "rules": []},
                undo={"group_id": group["GroupId"], "rules": rules},
            ))
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        ec2 = ctx.client("ec2")
        group_id, vpc_id = change.before["group_id"], change.before["vpc_id"]
        if _default_group(ec2, group_id, vpc_id) is None:
            return "already done"  # the VPC and its default group are gone
        live = {r["SecurityGroupRuleId"]: r for r in _rules(ec2, group_id)}
        planned = {r["SecurityGroupRuleId"]: r for r in change.before["rules"]}
        changed = sorted(i for i in planned if i in live and live[i] != planned[i])
        if changed:
            raise Drift(f"rule(s) {', '.join(changed)} of {group_id} changed since the plan; not touched")
        remaining = [planned[i] for i in sorted(planned) if i in live]
        if not remaining:
            return "already done"
        for egress, operation in ((False, "revoke_security_group_ingress"), (True, "revoke_security_group_egress")):
            ids = [r["SecurityGroupRuleId"] for r in remaining if bool(r.get("IsEgress")) == egress]
            if ids:
                call(ec2, operation, GroupId=group_id, SecurityGroupRuleIds=ids)
        return "applied"
