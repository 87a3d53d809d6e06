"""Security group rules as data: read, describe, compare, and turn back into permissions.

Shared by the tasks that touch security groups; the `_` keeps it out of task discovery.
"""

from __future__ import annotations

from typing import Any

from orgrunner.aws import paginate
from orgrunner.task import Drift


def as_data(rule: dict[str, Any]) -> dict[str, Any]:
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


WORLD = ("0.0.0.0/0", "::/0")


def open_to_world(rule: dict[str, Any]) -> bool:
    """Ingress from anywhere on the internet (0.0.0.0/0 or ::/0)."""
    return not rule.get("IsEgress") and _peer(rule) in WORLD


def describe_rule(rule: dict[str, Any]) -> str:
    direction = "egress to" if rule.get("IsEgress") else "ingress from"
    line = f"{rule.get('SecurityGroupRuleId')}: {_ports(rule)} {direction} {_peer(rule)}"
    return f"{line} (open to the internet)" if open_to_world(rule) else line


def risk_of(rules: list[dict[str, Any]]) -> str:
    """Why a reviewer must see a change of these rules first ("" when nothing is exposed)."""
    exposed = [r for r in rules if open_to_world(r)]
    if not exposed:
        return ""
    ports = ", ".join(sorted(_ports(r) for r in exposed))
    return f"{len(exposed)} ingress rule(s) open to the internet ({ports})"


def ordered(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules for reading: the exposed ones first, then by id."""
    return sorted(rules, key=lambda r: (not open_to_world(r), _ports(r), r["SecurityGroupRuleId"]))


def permission(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule as the IpPermissions entry that authorizes it again."""
    perm: dict[str, Any] = {"IpProtocol": rule["IpProtocol"]}
    if rule["IpProtocol"] != "-1":
        perm.update(FromPort=rule.get("FromPort"), ToPort=rule.get("ToPort"))
    extra = {"Description": rule["Description"]} if rule.get("Description") else {}
    if rule.get("CidrIpv4"):
        perm["IpRanges"] = [{"CidrIp": rule["CidrIpv4"], **extra}]
    elif rule.get("CidrIpv6"):
        perm["Ipv6Ranges"] = [{"CidrIpv6": rule["CidrIpv6"], **extra}]
    elif rule.get("PrefixListId"):
        perm["PrefixListIds"] = [{"PrefixListId": rule["PrefixListId"], **extra}]
    elif rule.get("ReferencedGroupId"):
        perm["UserIdGroupPairs"] = [{"GroupId": rule["ReferencedGroupId"], **extra}]
    return perm


def content(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules without their ids, which change when a rule is recreated."""
    return sorted(({k: v for k, v in r.items() if k != "SecurityGroupRuleId"} for r in rules), key=repr)


def default_group(ec2: Any, group_id: str, vpc_id: str) -> dict[str, Any] | None:
    groups = paginate(ec2, "describe_security_groups", "SecurityGroups",
                      Filters=[{"Name": "group-id", "Values": [group_id]}])
    group: dict[str, Any] | None = groups[0] if groups else None
    if group is None:
        return None
    if group.get("GroupName") != "default" or group.get("VpcId") != vpc_id:
        raise Drift(f"{group_id} is no longer the default group of {vpc_id}; not touched")
    return group


def rules_of(ec2: Any, group_id: str) -> list[dict[str, Any]]:
    rules = paginate(ec2, "describe_security_group_rules", "SecurityGroupRules",
                     Filters=[{"Name": "group-id", "Values": [group_id]}])
    return sorted((as_data(r) for r in rules), key=lambda r: r["SecurityGroupRuleId"])
